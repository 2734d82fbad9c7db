"""Entry points: the console, `--serve`, `web`, `sync`, `worker`, `token`, `doctor` and
`demo-upstream`."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from types import FrameType
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from opsdash.config import ConfigurationError, Settings, load_settings
from opsdash.engine.blobs import BlobStoreUnavailable
from opsdash.engine.db import SchemaOutdated


class _Stoppable(Protocol):
    def stop(self) -> None: ...


EngineT = TypeVar("EngineT", bound=_Stoppable)
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _parse_any_port(text: str) -> int:
    return 0 if text == "0" else _parse_port(text)


def _parse_ttl(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 1h or 7d")
    amount, unit = int(match[1]), match[2]
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount})


def _mode_options(defaults: bool) -> argparse.ArgumentParser:
    """--demo and --config, accepted before or after the command (``opsdash sync --demo``)."""
    options = argparse.ArgumentParser(add_help=False)
    # After the command, an option left out must not overwrite one given before it.
    default: Any = None if defaults else argparse.SUPPRESS
    options.add_argument(
        "--demo",
        action="store_true",
        help="run the demo upstream against the configured database (also OPSDASH_DEMO=1)",
        default=False if defaults else argparse.SUPPRESS,
    )
    options.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (also OPSDASH_CONFIG; default: opsdash.toml in the data folder)",
        default=default,
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsdash",
        description="Sync engine, read API and operator console for MaidCentral schedules. "
        "With no command, opens the operator console.",
        parents=[_mode_options(defaults=True)],
    )
    per_command = [_mode_options(defaults=False)]
    parser.add_argument("--serve", action="store_true", help="run headless: HTTP read API + engine")
    parser.add_argument("--host", default="127.0.0.1", help="with --serve: address to bind")
    parser.add_argument("--port", type=_parse_port, default=8000, help="with --serve: port to bind")
    parser.add_argument(
        "--workers", type=int, default=None, help="with --serve: HTTP worker processes"
    )
    parser.add_argument(
        "--no-engine",
        action="store_true",
        help="with --serve or web: no scheduler or workers in this process",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sync = commands.add_parser(
        "sync", help="queue a sync run (all companies, one company or day)", parents=per_command
    )
    sync.add_argument("--company", help="ServiceCompanyId of one company")
    sync.add_argument("--date", type=_parse_date, help="one day (YYYY-MM-DD)")
    sync.add_argument("--wait", action="store_true", help="run workers until the queue is empty")
    sync.add_argument("--concurrency", type=int, default=None, help="workers while waiting")

    worker = commands.add_parser("worker", help="run workers only (scale-out)", parents=per_command)
    worker.add_argument("--concurrency", type=int, default=None, help="worker threads")
    worker.add_argument(
        "--with-scheduler", action="store_true", help="also run the hourly coordinator"
    )

    verify = commands.add_parser(
        "verify",
        help="compare schedule_data with storage; exit 1 when anything differs",
        description="Check every stored day's object: there, of the recorded size, and with "
        "--deep the recorded SHA-256. Prints what differs; --repair queues resyncs.",
        parents=per_command,
    )
    verify.add_argument("--company", help="ServiceCompanyId of one company")
    verify.add_argument(
        "--deep", action="store_true", help="download every object and check its SHA-256"
    )
    verify.add_argument(
        "--repair", action="store_true", help="queue a resync of every day that differs"
    )

    token = commands.add_parser(
        "token",
        help="mint a read-API token for a synced user (embedded mode)",
        description="Mint an HS256 read-API token for a synced user, signed with the local "
        "secret of the embedded mode (or SUPABASE_JWT_SECRET when set). For trying the API "
        "and for embedded deployments: in production, portal users get their tokens from "
        "Supabase Auth. A token cannot be revoked before it expires, so its lifetime is "
        "capped at 24 hours.",
        parents=per_command,
    )
    token.add_argument("--email", required=True, help="the synced user's email")
    token.add_argument(
        "--ttl",
        type=_parse_ttl,
        default=timedelta(hours=1),
        help="lifetime such as 30m or 8h (default 1h, at most 24h)",
    )

    web = commands.add_parser(
        "web",
        help="serve the console to browsers, behind a sign-in",
        description="Serve the operator console in a browser (one console process per open "
        "page), for the operators added with `opsdash operators add`.",
        parents=per_command,
    )
    web.add_argument("--host", dest="web_host", default="127.0.0.1", help="address to bind")
    web.add_argument(
        "--port",
        dest="web_port",
        type=_parse_any_port,
        default=8080,
        help="port to bind (0: any free port, printed at start)",
    )
    web.add_argument(
        "--no-engine",
        dest="web_no_engine",
        action="store_true",
        help="host no workers or scheduler here (they run in `opsdash worker` processes)",
    )

    commands.add_parser("migrate", help="bring the database schema up to date", parents=per_command)
    commands.add_parser(
        "doctor",
        help="check every configured part (database, storage, Auth, upstream, tokens, clock)",
        parents=per_command,
    )
    alerts = commands.add_parser(
        "alerts", help="alert channels (`alerts test`)", parents=per_command
    )
    from opsdash import cli_alerts

    cli_alerts.add_arguments(alerts)
    operators = commands.add_parser(
        "operators",
        help="who may sign in to the browser console (`operators add NAME [--read-only]`)",
        parents=per_command,
    )
    from opsdash import cli_operators

    cli_operators.add_arguments(operators)

    demo = commands.add_parser("demo-upstream", help="serve the demo MaidCentral API")
    from opsdash.demo import cli as demo_cli

    demo_cli.add_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo-upstream":
            from opsdash.demo import cli as demo_cli

            return demo_cli.run(args)
        settings = load_settings(demo=args.demo, config_file=args.config)
        if args.command is None and not args.serve:
            print(describe_startup(settings), file=sys.stderr)
            return _console(settings)
        _configure_logging()
        logging.getLogger("opsdash.config").info("%s", describe_startup(settings))
        if args.serve:
            return _serve(settings, args)
        if args.command == "alerts":
            from opsdash import cli_alerts

            return cli_alerts.run(settings, args)
        if args.command == "operators":
            from opsdash import cli_operators

            return cli_operators.run(settings, args)
        commands = {
            "sync": _sync,
            "worker": _worker,
            "token": _token,
            "verify": _verify,
            "migrate": _migrate,
            "web": _web,
            "doctor": _doctor,
        }
        return commands[args.command](settings, args)
    except ConfigurationError as error:
        print(f"opsdash: cannot start:\n{error}", file=sys.stderr)
        return 2
    except ValidationError as error:  # settings built later with bad values
        print(f"opsdash: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    except OperationalError as error:
        from opsdash.engine.db import describe_error

        print(f"opsdash: {describe_error(error)}", file=sys.stderr)
        return 3
    except CliError as error:
        print(f"opsdash: {error}", file=sys.stderr)
        return 2
    except BlobStoreUnavailable as error:
        # Unreachable, key refused, bucket missing or public: one line, like --serve.
        print(f"opsdash: cannot use the blob store: {error}", file=sys.stderr)
        return 2
    except SchemaOutdated as error:
        print(f"opsdash: {error}", file=sys.stderr)
        return 2


def describe_startup(settings: Settings) -> str:
    """Which mode and which configuration file: the first thing every command logs."""
    source = settings.config_file_read
    read = f"read {source}" if source else "no config file (environment only)"
    return f"mode {settings.mode.value.upper()}; configuration: {read}"


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # A periodic task still running at its next tick is skipped by design (one instance at a
    # time); while the database hangs that was a warning per task every few seconds, on top
    # of the outage's own lines. A task's errors are still logged (apscheduler.executors).
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    # Alembic lists its autogenerate plugins and dialect each time the schema version is
    # read (every start); the migrations it runs are still logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").addFilter(_only_migrations_run)


def _only_migrations_run(record: logging.LogRecord) -> bool:
    """Alembic's "Context impl …" and "Will assume … DDL" lines, said at every start, say
    nothing an operator can use; its "Running upgrade …" lines and warnings stay."""
    return record.levelno > logging.INFO or not record.getMessage().startswith(
        ("Context impl", "Will assume")
    )


def _console(settings: Settings) -> int:
    from opsdash.app import run_console
    from opsdash.demo import engine_for

    return run_console(settings, engine_factory=engine_for)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from opsdash.demo import engine_for
    from opsdash.readapi.server import serve

    return serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        with_engine=not args.no_engine,
        engine_factory=engine_for,
    )


def _web(settings: Settings, args: argparse.Namespace) -> int:
    from opsdash.demo import engine_for
    from opsdash.web.launch import WebConfigError, run_web

    try:
        return run_web(
            settings,
            host=args.web_host,
            port=args.web_port,
            with_engine=not (args.no_engine or args.web_no_engine),
            engine_factory=engine_for,
        )
    except WebConfigError as error:
        raise CliError(str(error)) from None


EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def _wait_for_signal() -> threading.Event:
    """An event set by the first SIGINT/SIGTERM; a second one exits at once.

    The first asks for a prompt, clean stop (jobs released); an operator who sends
    another does not want to wait even for that, and whatever is still held is left
    to rescue.
    """
    stop = threading.Event()

    def _handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            print("opsdash: second signal: exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    return stop


def _stop(engine: _Stoppable) -> None:
    """``engine.stop()`` on a helper thread.

    The main thread only waits, so it stays free to run signal handlers: a stop
    stuck on the database (a locked SQLite file, a frozen server) still yields to a
    second Ctrl-C.
    """
    stopper = threading.Thread(target=engine.stop, name="opsdash-stop", daemon=True)
    stopper.start()
    while stopper.is_alive():
        stopper.join(0.2)


@contextmanager
def _running(engine: EngineT) -> Iterator[EngineT]:
    """The engine, stopped on the way out (see ``_stop``)."""
    try:
        yield engine
    finally:
        _stop(engine)


def _sync(settings: Settings, args: argparse.Namespace) -> int:
    from opsdash.demo import engine_for

    with _running(engine_for(settings)) as engine:
        company_id = None
        if args.company:
            company = engine.company_by_service_id(args.company)
            if company is None:
                raise CliError(
                    f"unknown company {args.company!r}: run `opsdash sync` once to discover "
                    "companies, or check the ServiceCompanyId"
                )
            company_id = company.id
        started = datetime.now().astimezone()
        run = engine.sync(company_id=company_id, day=args.date)
        print(f"queued {run.queued} of {run.planned} planned jobs in {run.took_ms:.0f} ms")
        if not args.wait:
            return 0
        # Signals are caught before the workers start: a Ctrl-C as they send their first
        # requests is an interruption like any other, not a traceback.
        stop = _wait_for_signal()
        engine.start(workers=args.concurrency, scheduler=False)
        return _follow_progress(engine, started, stop)


def _follow_progress(engine: object, since: datetime, stop: threading.Event) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from opsdash.engine import queries
    from opsdash.engine.runtime import Engine

    assert isinstance(engine, Engine)

    with Progress(
        TextColumn("[bold]sync"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("sync", total=None, detail="")
        while not stop.is_set():
            by_status = queries.counts_since(engine.db, since)
            total = sum(by_status.values())
            done = (
                by_status.get("completed", 0)
                + by_status.get("failed", 0)
                + by_status.get("cancelled", 0)
            )
            detail = f"failed {by_status.get('failed', 0)}"
            progress.update(task, total=total, completed=done, detail=detail)
            if engine.active_jobs() == 0:
                break
            stop.wait(0.25)
    if stop.is_set():
        # Release the running jobs first, so that the summary says where they are now.
        _stop(engine)
    by_status = queries.counts_since(engine.db, since)
    summary = ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))
    if stop.is_set():
        print(
            f"interrupted: {summary}; upstream calls: {engine.upstream.calls}. "
            "Running jobs were released; unfinished ones run on the next `opsdash sync --wait` "
            "or in any `opsdash worker`.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"done: {summary}; upstream calls: {engine.upstream.calls}")
    return 1 if by_status.get("failed") else 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from opsdash.demo import engine_for

    with _running(engine_for(settings)) as engine:
        stop = _wait_for_signal()  # before the workers start (see _sync)
        engine.start(workers=args.concurrency, scheduler=args.with_scheduler)
        status = engine.status()
        print(
            f"opsdash worker: {status.workers_total} threads on {status.database}; "
            f"upstream {status.upstream}. Ctrl-C to stop.",
            file=sys.stderr,
        )
        # Never an untimed wait: the kernel may hand the signal to another thread, and
        # then only the main thread's next look at its pending signals runs the handler.
        while not stop.wait(0.5):
            pass
        print("stopping: releasing running jobs (a second signal exits at once)…", file=sys.stderr)
    return 0


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from opsdash.engine import queries
    from opsdash.engine.runtime import open_blob_store
    from opsdash.engine.schema import ready_database
    from opsdash.engine.verify import queue_repairs, verify

    with ready_database(settings) as db:
        blobs = open_blob_store(settings)
        try:
            if args.company and queries.company_id_of(db, args.company) is None:
                raise CliError(f"unknown company {args.company!r}")
            report = verify(db, blobs, service_company_id=args.company, deep=args.deep)
            console = Console()
            if report.findings:
                table = Table("company", "day", "object", "problem", title="differences")
                for finding in report.findings:
                    table.add_row(
                        finding.service_company_id,
                        finding.day.isoformat(),
                        finding.path,
                        finding.problem,
                    )
                console.print(table)
            depth = "size and SHA-256" if args.deep else "presence and size"
            console.print(
                f"checked {report.checked} days of {report.companies} companies "
                f"({depth}) in {blobs.description}: {len(report.findings)} differ"
            )
            if args.repair and report.findings:
                repaired = queue_repairs(
                    db, blobs, report.findings, max_attempts=settings.max_attempts
                )
                console.print(
                    f"repair: removed {repaired.removed} wrong objects, queued "
                    f"{repaired.queued} resyncs ({len(report.findings) - repaired.queued} were "
                    "already queued); workers (`opsdash worker`, the console or --serve) "
                    "rewrite them"
                )
        finally:
            blobs.close()
    return 0 if report.ok else 1


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from opsdash import doctor

    checks = doctor.run_checks(settings)
    Console(soft_wrap=False).print(doctor.render(checks, settings))
    return doctor.exit_status(checks)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from opsdash.datafolder import secure_existing
    from opsdash.engine.schema import ready_database
    from opsdash.readapi.tokens import TokenError, mint_token

    secure_existing(settings.data_dir)
    with ready_database(settings) as db:
        try:
            print(mint_token(settings, db, args.email, args.ttl))
        except TokenError as error:
            raise CliError(str(error)) from None
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from opsdash.engine.db import MIGRATION_STATEMENT_S, DbTimeouts, connect_with
    from opsdash.engine.schema import schema_status, upgrade

    # A migration may rewrite a whole table: the usual statement limit would cancel it.
    timeouts = replace(DbTimeouts.of(settings), statement_s=MIGRATION_STATEMENT_S)
    db = connect_with(settings, timeouts=timeouts)
    try:
        before, head = schema_status(db)
        upgrade(db)
    finally:
        db.dispose()
    if before == head:
        print(f"database schema already at revision {head} ({db.display_url})")
    else:
        print(f"database schema migrated: {before or 'unversioned'} -> {head} ({db.display_url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
