"""Every code block of the README and of the documentation site (docs/, in the
order of mkdocs.yml's nav) runs as written.

- ``python`` blocks run one by one, each in a fresh interpreter (an example that
  registers an event class changes nothing else), in a folder of the page's own
  that starts with the database the README's quick start writes. A page that
  names ``DATABASE_URL`` gets the test PostgreSQL server there, with a schema of
  its own in ``LEDGER_SCHEMA`` (dropped afterwards).
- ``sh`` blocks: a ``ctxledger`` command runs in that folder and must succeed;
  ``tools/dev TASK`` must name a task of tools/dev, and every ``--flag`` its line
  names must be one the task's benchmark accepts (benchmarks take minutes: they run
  in ``tools/dev bench*``, not here); ``pip install`` must name extras that
  pyproject.toml defines. Any other command fails the test: a new kind of command
  needs a way to be checked here before a page may show it.
- ``yaml`` blocks (Prometheus's alert rules) must parse, and each rule names an
  alert and its expression.
- Blocks with no language or ``text`` (signatures, synopses, layouts, a
  deployment's shell session) and ``json`` are not run, but every ``ctxledger``
  command line in them must name commands click knows, with options each of
  them takes; the Python API reference must show every public name.
- A fence must start at the line's start, with backticks: one that does not
  would be passed over, so it fails the test.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import click
import pytest
import yaml

import ledger
import projections
from ctxledger._cli import main
from ledger import PLACEHOLDERS

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NOT_CODE = {"", "json", "text"}
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str


def _nav_pages() -> list[Path]:
    listed = re.findall(r"^\s*- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", _mkdocs(), re.M)
    return [DOCS / name for name in listed]


def _mkdocs() -> str:
    return (ROOT / "mkdocs.yml").read_text()


def _blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    opened: tuple[int, str] | None = None
    lines: list[str] = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        stripped = line.lstrip()
        assert not stripped.startswith("~~~"), f"{page}:{number}: use ``` fences"
        assert not (stripped.startswith("```") and stripped != line), (
            f"{page}:{number}: an indented fence, which the test would not see"
        )
        if opened is None and line.startswith("```"):
            opened, lines = (number, line[3:].strip()), []
        elif opened is not None and line.rstrip() == "```":
            blocks.append(Block(page, opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
        elif opened is not None:
            lines.append(line)
    assert opened is None, f"{page}: the block opened at line {opened} never closes"
    return blocks


PAGES = [README, *_nav_pages()]


def test_every_page_of_docs_is_in_the_nav_and_every_nav_entry_exists() -> None:
    on_disk = set(DOCS.rglob("*.md"))
    listed = set(_nav_pages())

    assert listed == on_disk
    assert len(_nav_pages()) == len(listed)  # no page twice


def test_every_block_has_a_language_the_runner_knows() -> None:
    languages = {block.language for page in PAGES for block in _blocks(page)}

    assert languages <= NOT_CODE | {"python", "sh", "yaml"}


@pytest.fixture(scope="module")
def quick_start_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database the README's quick start writes, which later pages read."""
    folder = tmp_path_factory.mktemp("quick-start")
    (quick_start,) = [b for b in _blocks(README) if b.language == "python"]
    _run_python(quick_start, folder)
    return folder / "contexts.db"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_code_blocks_of_the_page_run(
    page: Path, quick_start_db: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    shutil.copyfile(quick_start_db, tmp_path / "contexts.db")
    database: dict[str, str] = {}
    if "DATABASE_URL" in page.read_text():
        # A block on PostgreSQL: the test server, in a schema of the page's own.
        url = request.getfixturevalue("postgres_url")
        dsn, _, schema = url.partition("?schema=")
        database = {"DATABASE_URL": dsn, "LEDGER_SCHEMA": schema}
    ran = 0
    for block in _blocks(page):
        if block.language == "python":
            _run_python(block, tmp_path, database)
            ran += 1
        elif block.language == "yaml":
            _check_rules(block)
            ran += 1
        elif block.language == "sh":
            for command in _commands(block):
                _run_shell(block, command, tmp_path)
                ran += 1

    code = [b for b in _blocks(page) if b.language not in NOT_CODE]
    assert ran >= len(code)  # every block of code ran at least one command


def _run_python(
    block: Block, folder: Path, database: dict[str, str] | None = None
) -> None:
    script = folder / f"block-{block.page.stem}-{block.line}.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        env={**_environment(), **(database or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    where = f"{block.page.relative_to(ROOT)}:{block.line}"
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}{done.stderr}"


def _check_rules(block: Block) -> None:
    where = f"{block.page.relative_to(ROOT)}:{block.line}"
    rules = [
        rule
        for group in yaml.safe_load(block.code)["groups"]
        for rule in group["rules"]
    ]
    assert rules, f"{where}: no rules"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, where
        assert rule["alert"], where
        assert rule["expr"], where


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTXLEDGER_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _commands(block: Block) -> list[tuple[list[str], str]]:
    """Each line's words (comments dropped) and the line as written."""
    found = []
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            found.append((words, line))
    return found


def _run_shell(block: Block, command: tuple[list[str], str], folder: Path) -> None:
    words, line = command
    where = f"{block.page.relative_to(ROOT)}:{block.line}: {line.strip()}"
    if words[0] == "ctxledger":
        done = subprocess.run(
            [sys.executable, "-m", "ctxledger", *words[1:]],
            cwd=folder,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"{where} failed:\n{done.stdout}{done.stderr}"
    elif words[0] == "tools/dev":
        _check_dev_task(words[1], line, where)
    elif words[:2] == ["pip", "install"]:
        _check_install(words[2:], where)
    else:
        pytest.fail(f"{where}: no way to check this command in the docs test")


@cache
def _dev_tasks() -> dict[str, str | None]:
    """tools/dev's tasks, with the benchmark module each runs (None: not one)."""
    tasks: dict[str, str | None] = {}
    script = (ROOT / "tools" / "dev").read_text()
    cases = script.split('case "$task" in', 1)[1].split("esac", 1)[0]
    for task, body in re.findall(
        r"^    ([a-z-]+)\)(.*?)(?=^    [a-z*-]+\)|\Z)", cases, re.M | re.S
    ):
        module = re.search(r"-m (tools\.bench\.\w+)", body)
        tasks[task] = module.group(1) if module else None
    return tasks


@cache
def _flags_of(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return done.stdout


def _check_dev_task(task: str, line: str, where: str) -> None:
    assert task in _dev_tasks(), f"{where}: tools/dev has no task {task!r}"
    module = _dev_tasks()[task]
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    if module is None:
        assert not flags, f"{where}: {task} is not a benchmark; flags {flags}"
        return
    accepted = _flags_of(module)
    for flag in flags:
        assert re.search(rf"{flag}\b", accepted), f"{where}: {module} has no {flag}"


def _check_install(requirements: list[str], where: str) -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
    )
    for requirement in requirements:
        name, _, given = requirement.partition("[")
        assert name in {"ctxledger", "."}, f"{where}: only ctxledger is installed"
        wanted = set(given.rstrip("]").split(",")) - {""}
        assert wanted <= extras, f"{where}: no extra {wanted - extras}"


def test_the_docs_list_exactly_the_placeholders_the_code_refuses() -> None:
    page = (DOCS / "reference" / "errors.md").read_text()
    marker = "The placeholder list, `ledger.PLACEHOLDERS`:"
    listing = page.split(marker, 1)[1].split(".\n", 1)[0]

    listed = {item.strip().strip("`") for item in listing.split(",")}

    assert listed == set(PLACEHOLDERS)


def test_every_synopsis_names_commands_and_options_that_exist() -> None:
    checked = 0
    for page in PAGES:
        for block in _blocks(page):
            if block.language in {"sh", "python"}:
                continue
            for line in _synopsis_lines(block.code):
                where = f"{page.relative_to(ROOT)}:{block.line}: {line}"
                _check_synopsis(line.split()[1:], main, where)
                checked += 1

    assert checked >= 30  # the CLI page's synopsis alone has more


def _synopsis_lines(code: str) -> list[str]:
    """Each ``ctxledger`` line, with the indented lines that continue it; comments
    dropped."""
    lines: list[str] = []
    for raw in code.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if line.startswith("ctxledger "):
            lines.append(line)
        elif lines and raw.startswith(" ") and line.strip().startswith("["):
            lines[-1] += " " + line.strip()
    return lines


def _check_synopsis(words: list[str], group: click.Group, where: str) -> None:
    """The first word that is neither an option nor an option's value names a
    command of ``group``; every ``--option`` after it belongs to that command (or
    to the group), an option's value is one it takes, and a flag takes none;
    alternatives after a group's name (``add URL | list [--json]``) are checked
    each."""
    options = _options_of(group)
    value_of: click.Option | None = None
    for index, word in enumerate(words):
        bare = word.strip("[]")
        if bare.startswith("-"):
            assert bare in options, f"{where}: ctxledger has no option {bare}"
            value_of = None if options[bare].is_flag else options[bare]
            continue
        if value_of is not None:
            _check_value(value_of, bare, where)
            value_of = None
            continue
        command = group.commands.get(bare)
        assert command is not None, f"{where}: ctxledger has no command {bare!r}"
        rest = words[index + 1 :]
        if isinstance(command, click.Group):
            for alternative in " ".join(rest).split(" | "):
                _check_synopsis(alternative.split(), command, where)
        else:
            _check_options(rest, command, options, where)
        return
    # No command: only the group's own flags (ctxledger --version).
    assert all(
        options[word.strip("[]")].is_flag for word in words if word.startswith("-")
    ), f"{where}: names no command"


def _check_options(
    words: list[str], command: click.Command, outer: dict[str, click.Option], where: str
) -> None:
    known = {**outer, **_options_of(command)}
    choices = [
        parameter.type
        for parameter in command.params
        if isinstance(parameter, click.Argument)
        and isinstance(parameter.type, click.Choice)
    ]
    value_of: click.Option | None = None
    for word in words:
        bare = word.strip("[]").removesuffix("...").removesuffix("]")
        if value_of is not None and not bare.startswith("-"):
            _check_value(value_of, bare, where)
            value_of = None
            continue
        value_of = None
        if choices and bare and bare == bare.lower() and not bare.startswith("-"):
            # A value of the command's argument, such as rebuild's view names.
            assert bare in choices[0].choices, (
                f"{where}: {command.name} takes no {bare!r}"
            )
        for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", word):
            assert flag in known, f"{where}: {command.name} has no option {flag}"
            value_of = None if known[flag].is_flag else known[flag]


def _check_value(option: click.Option, value: str, where: str) -> None:
    """A value written for ``option``: a metavar (upper case) stands for any; a
    value of a choice must be one of its choices."""
    if not isinstance(option.type, click.Choice) or value != value.lower():
        return
    for choice in value.split("|"):
        assert choice in option.type.choices, (
            f"{where}: {option.opts[0]} takes no {choice!r}"
        )


def _options_of(command: click.Command) -> dict[str, click.Option]:
    found = {
        name: parameter
        for parameter in command.params
        if isinstance(parameter, click.Option)
        for name in (*parameter.opts, *parameter.secondary_opts)
    }
    found["--help"] = click.Option(["--help"], is_flag=True)
    return found


def test_the_api_reference_shows_every_public_name() -> None:
    page = (DOCS / "reference" / "api.md").read_text()
    shown = set(re.findall(r"^::: ((?:ledger|projections)\.[\w.]+)$", page, re.M))
    errors = re.search(r"::: ledger\.errors\n(?:    .*\n)+", page)
    assert errors is not None
    shown |= {f"ledger.{name}" for name in re.findall(r"- (\w+)", errors.group(0))}

    public = {f"ledger.{name}" for name in ledger.__all__} | {
        f"projections.{name}" for name in projections.__all__
    }

    assert public <= shown, sorted(public - shown)
