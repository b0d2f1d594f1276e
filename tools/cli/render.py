"""Times on the command line: parsed as ISO 8601, shown in UTC."""

from datetime import UTC, datetime

import click


def utc_time(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """An ISO 8601 time option; one without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2026-11-23T10:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def format_time(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
