"""Render the migrations as the SQL files of ``supabase/migrations/`` (one per revision).

    python -m opsdash.migrations.supabase            # rewrite supabase/migrations/
    python -m opsdash.migrations.supabase --check    # exit 1 when a file is stale

Revision N becomes ``{20261128000000 + N - 1}_{revision file name}.sql``: the Supabase
CLI orders files by that number, and the first keeps the number of the hand-written
file it replaces, so a project that applied that one is not asked to apply it again.
Each file also moves ``alembic_version``, so ``opsdash`` sees the schema as current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsdash.engine.schema import render_sql, revisions, script_path

FIRST_VERSION = 20261128000000
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"


def expected_files() -> dict[str, str]:
    """File name → content, for every revision."""
    files: dict[str, str] = {}
    previous: str | None = None
    for number, revision in enumerate(revisions()):
        source = script_path(revision)
        header = (
            f"-- Generated from opsdash/migrations/versions/{source.name} by\n"
            "-- `python -m opsdash.migrations.supabase`: edit the revision, not this file.\n\n"
        )
        files[f"{FIRST_VERSION + number}_{source.stem}.sql"] = header + render_sql(
            previous, revision
        )
        previous = revision
    return files


def stale_files(folder: Path) -> list[str]:
    """Names that differ from the migrations: missing, changed or left over."""
    expected = expected_files()
    present = {path.name: path.read_text() for path in folder.glob("*.sql")}
    names = sorted(set(expected) | set(present))
    return [name for name in names if expected.get(name) != present.get(name)]


def write_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    expected = expected_files()
    for path in folder.glob("*.sql"):
        if path.name not in expected:
            path.unlink()
    for name, content in expected.items():
        (folder / name).write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsdash.migrations.supabase")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="supabase/migrations")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name}", file=sys.stderr)
        return 1 if stale else 0
    write_files(args.dir)
    print(f"wrote {len(revisions())} file(s) to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
