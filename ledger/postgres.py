"""PostgreSQL set-up that the library leaves to its users: the schema itself."""

import psycopg
from psycopg import sql


def create_schema(settings: dict[str, str]) -> None:
    """Creates the configured schema if it is missing (safe when processes race)."""
    schema = settings["POSTGRES_SCHEMA"]
    with psycopg.connect(
        dbname=settings["POSTGRES_DBNAME"],
        host=settings["POSTGRES_HOST"],
        port=settings["POSTGRES_PORT"],
        user=settings["POSTGRES_USER"],
        password=settings["POSTGRES_PASSWORD"],
        connect_timeout=int(settings["POSTGRES_CONNECT_TIMEOUT"]),
        autocommit=True,
    ) as connection:
        try:
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
            return  # Another process created it between the check and the insert.
