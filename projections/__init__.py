"""Views of the ledger: active contexts, compliance audit and continuity.

Open them with ``Projections.open(url)`` on the ledger's own database URL.
"""

from projections.api import VIEW_NAMES, Projections
from projections.continuity import continuity_of
from projections.errors import (
    ProjectionError,
    UndecodableEvent,
    UnknownView,
    ViewCannotApply,
    ViewNotBuilt,
    ViewsNeedDurableStorage,
)
from projections.models import AuditRow, ContinuityFigures, ViewStatus

__all__ = [
    "VIEW_NAMES",
    "AuditRow",
    "ContinuityFigures",
    "ProjectionError",
    "Projections",
    "UndecodableEvent",
    "UnknownView",
    "ViewCannotApply",
    "ViewNotBuilt",
    "ViewStatus",
    "ViewsNeedDurableStorage",
    "continuity_of",
]
