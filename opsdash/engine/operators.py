"""Console operators: who may sign in to a console, with what rights.

The terminal console runs as the person at the terminal (``TERMINAL_OPERATOR``, full
rights): whoever can start a process on the host can do anything anyway. The browser
console signs operators in against the ``operators`` table, whose passwords are argon2
hashes (argon2-cffi's ``PasswordHasher``: salted, memory-hard, compared in constant time
by the library). A read-only operator may look at everything and change nothing; the
refusal happens in ``engine/operator_actions.py``, not only in what the console shows.
"""

from __future__ import annotations

import getpass
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsdash.engine.db import Database
from opsdash.engine.models import OperatorRecord, table_of
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.operators")

__all__ = [
    "TERMINAL_OPERATOR",
    "InvalidOperator",
    "Operator",
    "OperatorExists",
    "OperatorInfo",
    "UnknownOperator",
    "add_operator",
    "find_operator",
    "list_operators",
    "remove_operator",
    "set_disabled",
    "verify_operator",
]

OPERATORS = table_of(OperatorRecord)
OP = OPERATORS.c

# Names travel in a sign-in form, an environment variable and the audit trail: keep them plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Operator:
    """Who is acting in a console, and whether they may change anything."""

    name: str
    read_only: bool


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "terminal"


TERMINAL_OPERATOR = Operator(name=_os_user(), read_only=False)
"""The terminal console's operator: the OS user, with full rights."""


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    read_only: bool
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None


class InvalidOperator(ValueError):
    """A name or password that cannot be used."""


class OperatorExists(InvalidOperator):
    def __init__(self, name: str) -> None:
        super().__init__(f"an operator named {name!r} already exists")


class UnknownOperator(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no operator named {name!r}")


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _decoy_hash() -> str:
    # Verified against when the name is unknown, so a wrong name takes as long as a
    # wrong password and the timing does not tell which names exist.
    return _hasher().hash("not a password of anyone")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidOperator(
            f"{name!r} is not a usable operator name: 1-64 letters, digits, '.', '_', '@' "
            "or '-', starting with a letter or digit"
        )
    return name


def add_operator(db: Database, name: str, password: str, *, read_only: bool = False) -> Operator:
    check_name(name)
    if not password:
        raise InvalidOperator("the password is empty")
    password_hash = _hasher().hash(password)
    try:
        with db.write() as conn:
            conn.execute(
                insert(OPERATORS).values(
                    name=name,
                    password_hash=password_hash,
                    read_only=read_only,
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        raise OperatorExists(name) from None
    log.info("operator %s added (%s)", name, "read-only" if read_only else "full rights")
    return Operator(name=name, read_only=read_only)


def list_operators(db: Database) -> list[OperatorInfo]:
    with db.read() as conn:
        rows = conn.execute(
            select(OP.name, OP.read_only, OP.created_at, OP.disabled_at, OP.last_login_at).order_by(
                OP.name
            )
        ).all()
    return [OperatorInfo(*row) for row in rows]


def remove_operator(db: Database, name: str) -> None:
    """Delete the operator; their rows in the audit trail keep their name."""
    with db.write() as conn:
        removed = conn.execute(delete(OPERATORS).where(OP.name == name)).rowcount
    if not removed:
        raise UnknownOperator(name)
    log.info("operator %s removed", name)


def set_disabled(db: Database, name: str, disabled: bool) -> None:
    """A disabled operator can no longer sign in or start a console."""
    with db.write() as conn:
        changed = conn.execute(
            update(OPERATORS)
            .where(OP.name == name)
            .values(disabled_at=utcnow() if disabled else None)
        ).rowcount
    if not changed:
        raise UnknownOperator(name)
    log.info("operator %s %s", name, "disabled" if disabled else "enabled")


def find_operator(db: Database, name: str) -> Operator | None:
    """The enabled operator called ``name``, or None (unknown or disabled)."""
    with db.read() as conn:
        row = conn.execute(
            select(OP.read_only).where(OP.name == name, OP.disabled_at.is_(None))
        ).first()
    return None if row is None else Operator(name=name, read_only=bool(row.read_only))


def verify_operator(db: Database, name: str, password: str) -> Operator | None:
    """The operator if ``password`` is theirs and they are enabled; None otherwise.

    Records the sign-in time, and upgrades the stored hash when the hasher's
    parameters have grown since it was made.
    """
    with db.read() as conn:
        row = conn.execute(
            select(OP.password_hash, OP.read_only, OP.disabled_at).where(OP.name == name)
        ).first()
    hasher = _hasher()
    try:
        hasher.verify(row.password_hash if row else _decoy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    values: dict[str, object] = {"last_login_at": utcnow()}
    if hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = hasher.hash(password)
    with db.write() as conn:
        conn.execute(update(OPERATORS).where(OP.name == name).values(**values))
    return Operator(name=name, read_only=bool(row.read_only))
