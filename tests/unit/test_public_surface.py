"""The public surface: what ``ledger`` and ``projections`` export, and nothing else."""

import importlib
import inspect
from types import ModuleType

import pytest

import ledger
import projections

LEDGER_NAMES = {
    "ContextCleared",
    "ContextCreated",
    "ContextExpired",
    "ContextReused",
    "ContextUpdated",
    "UserForgotten",
    "register_event_class",
    "EVENT_KINDS",
    "PLACEHOLDERS",
    "AsyncChangeFeed",
    "AsyncContextLedger",
    "ChainBreak",
    "ChainReport",
    "ChangeFeed",
    "ConcurrencyConflict",
    "Context",
    "ContextLedger",
    "ContextLimitExceeded",
    "ContextNotFound",
    "EventKind",
    "ExportFault",
    "ExportManifest",
    "ExportReport",
    "InvalidContextInput",
    "LedgerClosed",
    "LedgerConfigError",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerEvent",
    "LedgerNotFound",
    "StorageUnavailable",
    "UserChain",
    "verify_export",
    "CheckpointError",
    "CheckpointReport",
    "LeafFault",
    "SignedCheckpoint",
    "TreeHead",
    "write_checkpoint_key",
    "verify_event_proof",
    "metrics_exposition",
}
PROJECTIONS_NAMES = {
    "VIEW_NAMES",
    "AuditRow",
    "ContinuityFigures",
    "PositionsPerShard",
    "ProjectionError",
    "Projections",
    "RebuildPartFailed",
    "ShardViewStatus",
    "UndecodableEvent",
    "UnknownView",
    "ViewCannotApply",
    "ViewStatus",
    "ViewNotBuilt",
    "ViewsNeedDurableStorage",
    "continuity_of",
}
PACKAGES = [ledger, projections]


def _exported(package: ModuleType) -> list[str]:
    names: list[str] = package.__all__
    return names


def _defined_here(package: ModuleType, value: object) -> bool:
    """Whether ``value`` is a class or function of this package's own modules."""
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return False
    module: str = value.__module__
    return module == package.__name__ or module.startswith(f"{package.__name__}.")


def test_ledger_exports_exactly_the_public_api() -> None:
    assert set(_exported(ledger)) == LEDGER_NAMES


def test_projections_exports_exactly_its_public_api() -> None:
    assert set(_exported(projections)) == PROJECTIONS_NAMES


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_no_name_is_listed_twice_in_all(package: ModuleType) -> None:
    names = _exported(package)

    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("package", "name"),
    [(package.__name__, name) for package in PACKAGES for name in _exported(package)],
)
def test_every_name_in_all_is_importable(package: str, name: str) -> None:
    module = importlib.import_module(package)

    assert name in vars(module)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_class_or_function_of_the_package_is_in_all(
    package: ModuleType,
) -> None:
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and _defined_here(package, value)
    }

    assert public - set(_exported(package)) == set()


def test_the_check_for_unlisted_names_sees_classes_and_functions() -> None:
    classes_and_functions = {
        name for name, value in vars(ledger).items() if _defined_here(ledger, value)
    }

    assert {"ContextLedger", "LedgerError", "verify_export"} <= classes_and_functions
