"""The schema's migration revisions, read without Alembic: a server process that imported it
(and Mako, which it brings) would keep 7 MB of its memory for good, only to answer /ready."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).parent / "migrations"


def _identifiers(script: Path) -> dict[str, object]:
    """`revision` and `down_revision` as a version script assigns them at its top level."""
    found: dict[str, object] = {}
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    found[target.id] = ast.literal_eval(node.value)
    return found


@cache
def code_heads() -> tuple[str, ...]:
    """The migration heads this code ships: the revisions no other one revises (read once)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        names = _identifiers(script)
        revisions.add(str(names["revision"]))
        down = names.get("down_revision")
        revised.update([down] if isinstance(down, str) else down or ())  # type: ignore[arg-type]
    return tuple(sorted(revisions - revised))


def database_heads(conn: Connection) -> tuple[str, ...]:
    """The revisions the database's schema is at (none when it was never migrated)."""
    if not inspect(conn).has_table("alembic_version"):  # Alembic's table, as env.py keeps it
        return ()
    return tuple(sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()))
