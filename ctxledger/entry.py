"""Where the ``ctxledger`` script and ``python -m ctxledger`` start.

Our top-level packages have plain names, ``ledger`` and ``projections``, and a service
that installs ctxledger may well have a ``ledger.py`` or ``projections.py`` of its own.
Its folder is on ``sys.path`` ahead of ours (PYTHONPATH and, under ``python -m``, the
working folder come before site-packages; an editable install's finder comes after
every path entry), so a plain ``import ledger`` would load the service's module. So
before the CLI imports anything, ``main`` puts the folder that holds the installed
``ctxledger``, ``ledger`` and ``projections`` (site-packages for a wheel, the source
tree for an editable install: both are this package's parent) first on ``sys.path``,
and forgets a ``ledger`` or ``projections`` that was already imported from elsewhere
(by a ``sitecustomize``, say). This changes only the CLI's own process, which runs no
code of the service; backends import ``ledger`` under their own ``sys.path``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parents[1]
OURS = ("ledger", "projections")


def main() -> None:
    """Runs the ``ctxledger`` command on our packages, whatever else is on the path."""
    put_ours_first()
    try:
        from ctxledger._cli import main as cli  # noqa: PLC0415 - once the path is ours
    except Exception as error:
        if not _raised_by_the_ledger(error):
            raise
        # Importing ``ledger`` checks its environment (PROMETHEUS_MULTIPROC_DIR):
        # reported as every command reports the ledger's errors.
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):
            print(f"  {note}", file=sys.stderr)
        sys.exit(1)
    cli()


def _raised_by_the_ledger(error: BaseException) -> bool:
    """Whether ``error`` is one of the ledger's own errors, told by its class's
    module: a failed ``import ledger`` leaves no ``ledger`` to import them from."""
    return any(kind.__module__ == "ledger.errors" for kind in type(error).__mro__)


def put_ours_first() -> None:
    """Puts ``ROOT`` first on ``sys.path``, and drops ``ledger`` and ``projections``
    modules loaded from anywhere else."""
    if sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in OURS and not _loaded_from(module, ROOT / top):
            del sys.modules[name]


def _loaded_from(module: object, folder: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).absolute().is_relative_to(folder)
