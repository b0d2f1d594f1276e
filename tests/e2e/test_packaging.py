"""Installed beside a service's own code: the ``ctxledger`` script and ``python -m
ctxledger`` run our ``ledger`` and ``projections`` when the service's ``tools``
package, ``ledger.py`` and ``projections.py`` come first on the path, and the
distribution installs no top-level name but ``ctxledger``, ``ledger`` and
``projections``.

The wheel is built from a copy of the sources and installed into a fresh venv in a
temporary folder, without the network: the build uses the dev venv's setuptools, and
the new venv reaches the dependencies through a ``.pth`` file that names the dev venv's
site-packages (which holds none of our packages: the dev install is editable). The
dev venv's own script is the editable install.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCES = ("pyproject.toml", "README.md", "ctxledger", "ledger", "projections")
INSTALLED = {"ctxledger", "ledger", "projections"}

SERVICE_FILES = {
    "tools/__init__.py": '"""The service\'s own tools."""\n',
    "tools/cli.py": (
        "def main() -> None:\n"
        '    raise SystemExit("the service\'s own tools.cli ran")\n'
    ),
    "ledger.py": '"""The service\'s own ledger."""\nSERVICE = "ledger"\n',
    "projections.py": '"""The service\'s projections."""\nSERVICE = "projections"\n',
}
# A site hook of the service that imports its modules before ours can start.
SITECUSTOMIZE = "import ledger, projections\n"


@dataclass(frozen=True)
class Install:
    """A venv where ctxledger is installed: its bin folder."""

    bin: Path

    def run(
        self, program: str, *args: str, cwd: Path
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``program`` of this venv in ``cwd``, with ``cwd`` on PYTHONPATH."""
        environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
        environment["PYTHONPATH"] = str(cwd)
        return subprocess.run(
            [str(self.bin / program), *args],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def _run(*command: str | Path, cwd: Path | None = None) -> None:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from a copy of the sources installed."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignored = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, source / name, ignore=ignored)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    no_network = ("--no-deps", "--no-index", "--no-build-isolation", "--quiet")
    _run(*pip, "wheel", *no_network, "--wheel-dir", base / "dist", source)
    (wheel,) = (base / "dist").glob("ctxledger-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", *no_network, wheel)
    paths = {"base": str(venv), "platbase": str(venv)}
    dependencies = {sysconfig.get_path(kind) for kind in ("purelib", "platlib")}
    site = Path(sysconfig.get_path("purelib", vars=paths))
    (site / "dev_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return venv


@pytest.fixture(params=["wheel", "editable"])
def install(request: pytest.FixtureRequest) -> Install:
    if request.param == "editable":
        return Install(Path(sys.executable).parent)
    venv: Path = request.getfixturevalue("wheel_venv")
    return Install(venv / "bin")


@pytest.fixture
def service(tmp_path: Path) -> Path:
    """A service's working folder with its own tools, ledger and projections."""
    folder = tmp_path / "service"
    for name, text in SERVICE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_the_services_modules_shadow_ours_for_a_plain_import(
    install: Install, service: Path
) -> None:
    code = "import ledger, projections, tools.cli; print(ledger.SERVICE)"

    done = install.run("python", "-c", code, cwd=service)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "ledger\n"


def test_version_runs_beside_a_services_own_modules(
    install: Install, service: Path
) -> None:
    done = install.run("ctxledger", "--version", cwd=service)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "ctxledger 0.1.0\n"


def test_python_m_ctxledger_runs_beside_a_services_own_modules(
    install: Install, service: Path
) -> None:
    done = install.run("python", "-m", "ctxledger", "--version", cwd=service)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "python -m ctxledger 0.1.0\n"


def test_demo_under_python_m_suggests_commands_run_the_same_way(
    install: Install, service: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    demo = ("--db", url, "demo", "--users", "1", "--messages", "5")

    done = install.run("python", "-m", "ctxledger", *demo, cwd=service)

    assert done.returncode == 0, done.stderr
    assert f"python -m ctxledger --db {url} status" in done.stdout
    assert "__main__" not in done.stdout


def test_commands_run_on_our_ledger_beside_a_services_own_modules(
    install: Install, service: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    options = ("--users", "2", "--threads", "1", "--messages", "20")

    demo = install.run("ctxledger", "--db", url, "demo", *options, cwd=service)
    status = install.run("ctxledger", "--db", url, "status", "--json", cwd=service)

    assert demo.returncode == 0, demo.stderr
    assert "messages simulated" in demo.stdout
    assert status.returncode == 0, status.stderr
    assert '"lag": 0' in status.stdout


def test_a_site_hook_that_imported_the_services_modules_does_not_stop_it(
    install: Install, service: Path
) -> None:
    (service / "sitecustomize.py").write_text(SITECUSTOMIZE)

    script = install.run("ctxledger", "--version", cwd=service)
    module = install.run("python", "-m", "ctxledger", "--version", cwd=service)

    assert script.returncode == 0, script.stderr
    assert module.returncode == 0, module.stderr


def test_the_distribution_installs_no_other_top_level_name(wheel_venv: Path) -> None:
    (info,) = wheel_venv.glob("lib/python*/site-packages/ctxledger-*.dist-info")
    records = (info / "RECORD").read_text().splitlines()

    installed = {
        line.split("/", 1)[0]
        for line in records
        if not line.startswith("..") and ".dist-info/" not in line
    }

    assert installed == INSTALLED
    assert set((info / "top_level.txt").read_text().split()) == INSTALLED
    assert (info / "entry_points.txt").read_text().count("ctxledger.entry:main") == 1
