"""Console operators and the audit trail: hashed passwords, verification, the CLI that
manages them, on SQLite and Postgres."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text, update

from opsdash.engine import audit
from opsdash.engine.db import Database
from opsdash.engine.operators import (
    OPERATORS,
    InvalidOperator,
    Operator,
    OperatorExists,
    UnknownOperator,
    add_operator,
    find_operator,
    list_operators,
    remove_operator,
    set_disabled,
    verify_operator,
)
from opsdash.engine.sqltypes import utcnow


def _stored_hash(db: Database, name: str) -> str:
    with db.read() as conn:
        return conn.execute(
            text("SELECT password_hash FROM operators WHERE name = :n"), {"n": name}
        ).scalar_one()


def test_an_operator_signs_in_with_their_password_only(db: Database) -> None:
    added = add_operator(db, "ana", "correct horse")
    assert added == Operator(name="ana", read_only=False)
    stored = _stored_hash(db, "ana")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored

    assert verify_operator(db, "ana", "wrong horse") is None
    assert verify_operator(db, "nobody", "correct horse") is None
    assert list_operators(db)[0].last_login_at is None
    assert verify_operator(db, "ana", "correct horse") == Operator("ana", read_only=False)
    assert list_operators(db)[0].last_login_at is not None


def test_a_read_only_operator_keeps_the_role(db: Database) -> None:
    add_operator(db, "viewer", "pw", read_only=True)
    assert verify_operator(db, "viewer", "pw") == Operator("viewer", read_only=True)
    assert find_operator(db, "viewer") == Operator("viewer", read_only=True)
    assert find_operator(db, "nobody") is None


def test_a_duplicate_name_an_empty_password_and_a_bad_name_are_refused(db: Database) -> None:
    add_operator(db, "ana", "pw")
    with pytest.raises(OperatorExists, match="'ana' already exists"):
        add_operator(db, "ana", "other", read_only=True)
    with pytest.raises(InvalidOperator, match="empty"):
        add_operator(db, "bo", "")
    for name in ("", " ana", "a b", "-x", "x" * 65, "ana\n"):
        with pytest.raises(InvalidOperator, match="not a usable operator name"):
            add_operator(db, name, "pw")
    assert [operator.name for operator in list_operators(db)] == ["ana"]
    assert verify_operator(db, "ana", "pw") == Operator("ana", read_only=False)


def test_a_disabled_operator_cannot_sign_in_until_enabled(db: Database) -> None:
    add_operator(db, "ana", "pw")
    set_disabled(db, "ana", True)
    assert verify_operator(db, "ana", "pw") is None
    assert find_operator(db, "ana") is None
    assert list_operators(db)[0].disabled_at is not None
    set_disabled(db, "ana", False)
    assert find_operator(db, "ana") == Operator("ana", read_only=False)
    with pytest.raises(UnknownOperator):
        set_disabled(db, "nobody", True)


def test_removing_an_operator_keeps_their_audit_entries(db: Database) -> None:
    add_operator(db, "ana", "pw")
    audit.record(db, operator="ana", console="web", action="sync_now", target=None, result="ok")
    remove_operator(db, "ana")
    assert list_operators(db) == []
    assert verify_operator(db, "ana", "pw") is None
    with pytest.raises(UnknownOperator, match="no operator named 'ana'"):
        remove_operator(db, "ana")
    assert [entry.operator for entry in audit.recent(db)] == ["ana"]


def test_a_hash_made_with_weaker_parameters_is_upgraded_at_sign_in(db: Database) -> None:
    add_operator(db, "ana", "pw")
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    with db.write() as conn:
        conn.execute(update(OPERATORS).where(OPERATORS.c.name == "ana").values(password_hash=weak))
    assert verify_operator(db, "ana", "pw") == Operator("ana", read_only=False)
    upgraded = _stored_hash(db, "ana")
    assert upgraded != weak and not PasswordHasher().check_needs_rehash(upgraded)
    assert verify_operator(db, "ana", "pw") is not None


def test_the_audit_trail_newest_first_and_pruned_by_age(db: Database) -> None:
    now = utcnow()
    audit.record(
        db,
        operator="ana",
        console="terminal",
        action="cancel_job",
        target={"job": "j1"},
        result="ok",
        at=now - timedelta(days=100),
    )
    audit.record(
        db,
        operator="viewer",
        console="web",
        action="sync_now",
        target={},
        result="refused",
        detail="read-only operator",
        at=now,
    )
    entries = audit.recent(db)
    assert [(e.operator, e.console, e.action, e.result) for e in entries] == [
        ("viewer", "web", "sync_now", "refused"),
        ("ana", "terminal", "cancel_job", "ok"),
    ]
    assert entries[0].detail == "read-only operator" and entries[1].target == {"job": "j1"}
    assert audit.prune_audit(db, older_than=timedelta(days=90), now=now) == 1
    assert [e.operator for e in audit.recent(db)] == ["viewer"]


# --- the command line -------------------------------------------------------------------


def _opsdash(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsdash", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import migrated

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_"))
    }
    env.update(
        {
            "OPSDASH_DATA_DIR": str(tmp_path / "data"),
            "DATABASE_URL": migrated(db_url),
            "OPSDASH_DEMO": "1",  # a test database, no MaidCentral: the demo asked for
        }
    )
    return env


def test_cli_adds_lists_and_removes_operators(cli_env: dict[str, str], db_url: str) -> None:
    from opsdash.engine.db import connect

    added = _opsdash("operators", "add", "ana", env=cli_env, stdin="s3cret pass\n")
    assert added.returncode == 0, added.stderr
    assert "operator ana added (full rights)" in added.stdout
    viewer = _opsdash("operators", "add", "viewer", "--read-only", env=cli_env, stdin="pw\n")
    assert viewer.returncode == 0, viewer.stderr

    listed = _opsdash("operators", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["ana", "full", "enabled"]
    assert lines[1].split()[:3] == ["viewer", "read-only", "enabled"]

    db = connect(db_url)
    try:
        # The whole line is the password, spaces included; the newline is not.
        assert verify_operator(db, "ana", "s3cret pass") == Operator("ana", read_only=False)
        assert verify_operator(db, "viewer", "pw") == Operator("viewer", read_only=True)
    finally:
        db.dispose()

    removed = _opsdash("operators", "remove", "viewer", env=cli_env)
    assert removed.returncode == 0 and "operator viewer removed" in removed.stdout
    assert "viewer" not in _opsdash("operators", "list", env=cli_env).stdout


def test_cli_refuses_a_duplicate_an_empty_password_and_an_unknown_name(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (a pipe, not a terminal, on standard input), to keep it quick.
    from opsdash.cli import main

    for name in [k for k in os.environ if k.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_"))]:
        monkeypatch.delenv(name)
    for name in ("OPSDASH_DATA_DIR", "DATABASE_URL", "OPSDASH_DEMO"):
        monkeypatch.setenv(name, cli_env[name])

    def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["operators", *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("add", "ana", stdin="pw\n")[0] == 0
    code, _, err = run("add", "ana", stdin="other\n")
    assert code == 2 and "an operator named 'ana' already exists" in err
    assert "Traceback" not in err
    for stdin in ("\n", ""):
        code, _, err = run("add", "bo", stdin=stdin)
        assert code == 2 and "the password is empty" in err
    code, _, err = run("remove", "nobody")
    assert code == 2 and "no operator named 'nobody'" in err
    code, out, _ = run("list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["ana"]
