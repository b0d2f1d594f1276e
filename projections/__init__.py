"""Views of the ledger: active contexts, compliance audit and continuity.

Open them with ``Projections.open(url)`` on the ledger's own database URL.
"""

from projections._api import VIEW_NAMES, Projections
from projections._continuity import continuity_of
from projections._errors import (
    PositionsPerShard,
    ProjectionError,
    RebuildPartFailed,
    UndecodableEvent,
    UnknownView,
    ViewCannotApply,
    ViewNotBuilt,
    ViewsNeedDurableStorage,
)
from projections._models import (
    AuditRow,
    ContinuityFigures,
    ShardViewStatus,
    ViewStatus,
)

__all__ = [
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
    "ViewNotBuilt",
    "ViewStatus",
    "ViewsNeedDurableStorage",
    "continuity_of",
]
