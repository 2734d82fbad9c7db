"""``opsdash operators add|list|remove|disable|enable``: who may sign in to the browser console.

The password is read with ``getpass`` (asked twice) when standard input is a terminal,
else as one line from standard input, so a script can pipe it in without it showing in
the process list or the shell history.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from opsdash.config import Settings
from opsdash.engine.db import Database
from opsdash.engine.operators import (
    InvalidOperator,
    UnknownOperator,
    add_operator,
    list_operators,
    remove_operator,
    set_disabled,
)
from opsdash.engine.schema import ready_database


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="operators_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add an operator (password from the terminal, or one line of standard input)",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--read-only", action="store_true", help="may look at everything, change nothing"
    )
    actions.add_parser("list", help="list the operators")
    for action, text in (
        ("remove", "remove an operator (the audit trail keeps their name)"),
        ("disable", "stop an operator from signing in, keeping them listed"),
        ("enable", "let a disabled operator sign in again"),
    ):
        actions.add_parser(action, help=text).add_argument("name", metavar="NAME")


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with ready_database(settings) as db:
            if args.operators_command == "add":
                password = read_password(args.name)
                add_operator(db, args.name, password, read_only=args.read_only)
                rights = "read-only" if args.read_only else "full rights"
                print(f"operator {args.name} added ({rights})")
            elif args.operators_command == "list":
                _print_list(db)
            elif args.operators_command == "remove":
                remove_operator(db, args.name)
                print(f"operator {args.name} removed")
            else:
                set_disabled(db, args.name, args.operators_command == "disable")
                print(f"operator {args.name} {args.operators_command}d")
    except (InvalidOperator, UnknownOperator) as error:
        print(f"opsdash: {_message(error)}", file=sys.stderr)
        return 2
    return 0


def read_password(name: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if password and getpass.getpass("again: ") != password:
            raise InvalidOperator("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise InvalidOperator("the password is empty")
    return password


def _message(error: Exception) -> str:
    # LookupError's str() quotes its argument; say the sentence as it is.
    return error.args[0] if error.args else str(error)


def _print_list(db: Database) -> None:
    operators = list_operators(db)
    if not operators:
        print("no operators: add one with `opsdash operators add NAME`")
        return
    width = max(len(operator.name) for operator in operators)
    for operator in operators:
        rights = "read-only" if operator.read_only else "full"
        state = "disabled" if operator.disabled_at else "enabled"
        last = (
            operator.last_login_at.astimezone().strftime("%Y-%m-%d %H:%M")
            if operator.last_login_at
            else "never"
        )
        print(f"{operator.name:<{width}}  {rights:<9}  {state:<8}  last sign-in {last}")
