"""The schema's one source of truth: numbered Alembic migrations for SQLite and Postgres.

``opsdash migrate`` (and, on SQLite, every start) applies them through
``opsdash.engine.schema``; ``python -m opsdash.migrations.supabase`` renders the same
migrations as the SQL files under ``supabase/migrations/``. See docs/migrations.md.
"""
