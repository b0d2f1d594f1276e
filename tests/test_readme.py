"""The README's code runs as written."""

from pathlib import Path

import pytest

from ledger import PLACEHOLDERS

README = Path(__file__).parent.parent / "README.md"


def test_the_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)

    exec(compile(code, str(README), "exec"), {})  # noqa: S102  (our own README)

    assert (tmp_path / "contexts.db").exists()


def test_the_readme_lists_exactly_the_placeholders_the_code_refuses() -> None:
    readme = README.read_text()
    marker = "The placeholder list, `ledger.PLACEHOLDERS`:"
    listing = readme.split(marker, 1)[1].split(".\n", 1)[0]

    listed = {item.strip().strip("`") for item in listing.split(",")}

    assert listed == set(PLACEHOLDERS)
