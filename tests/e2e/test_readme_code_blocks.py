"""The README's code runs as written."""

from pathlib import Path

import pytest

from ledger import PLACEHOLDERS

README = Path(__file__).parents[2] / "README.md"


def test_the_python_examples_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")[1:]]
    monkeypatch.chdir(tmp_path)

    for code in blocks:  # in order: auditing reads the quick start's database
        exec(compile(code, str(README), "exec"), {})  # noqa: S102  (our own README)

    assert len(blocks) == 5  # quick start, asyncio, FastAPI, auditing, checkpoints
    assert (tmp_path / "contexts.db").exists()
    assert (tmp_path / "user-42.jsonl").exists()
    assert (tmp_path / "checkpoints.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "user-42-proved.jsonl").exists()


def test_the_readme_lists_exactly_the_placeholders_the_code_refuses() -> None:
    readme = README.read_text()
    marker = "The placeholder list, `ledger.PLACEHOLDERS`:"
    listing = readme.split(marker, 1)[1].split(".\n", 1)[0]

    listed = {item.strip().strip("`") for item in listing.split(",")}

    assert listed == set(PLACEHOLDERS)
