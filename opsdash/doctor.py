"""``opsdash doctor``: check every configured part once and say how to fix what fails.

Each check is a small function returning a :class:`Check`. None of them changes
anything: no table, bucket, secret or job is created. The upstream check makes
exactly one request, which counts against the MaidCentral rate limit like any
other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from opsdash.config import Settings
from opsdash.engine.db import Database, DbTimeouts, connect
from opsdash.engine.models import Company, table_of

HTTP_TIMEOUT_S = 10.0
# Leases, backoff deadlines and the rows the original Edge Functions insert mix the
# engine's clock with the database's ``now()``; seconds apart is harmless, more is not.
MAX_CLOCK_SKEW_S = 5.0
AUTH_USERS_PATH = "/auth/v1/admin/users"
COMPANIES = table_of(Company)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not used in this mode
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    """Every check for the configured mode, in the order the table shows them."""
    checks: list[Check] = []
    db = _open_database(settings, checks)
    if db is None and checks[-1].ok is None:
        checks.append(Check("database schema", None, "created on the first start"))
    else:
        checks.append(_guard("database schema", lambda: check_schema(db, settings)))
    try:
        checks.append(_guard("blob storage", lambda: check_storage(settings)))
        checks.append(_guard("Auth admin API", lambda: check_auth_admin(settings)))
        checks.append(_guard("upstream", lambda: check_upstream(settings, db)))
        checks.append(_guard("token verification", lambda: check_tokens(settings)))
        if db is not None or checks[0].ok is False:
            checks.append(_guard("clock", lambda: check_clock(db)))
    finally:
        if db is not None:
            db.dispose()
    return checks


def _guard(name: str, check: Callable[[], Check]) -> Check:
    """A check that raised is a failed check, never a traceback."""
    try:
        return check()
    except Exception as error:
        return Check(name, False, f"{type(error).__name__}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- database -----------------------------------------------------------------------------


def _open_database(settings: Settings, checks: list[Check]) -> Database | None:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        from pathlib import Path

        if not Path(url.database).is_file():
            # A fresh embedded install: nothing is wrong, the first start creates it.
            checks.append(
                Check("database", None, f"{url.database} not created yet: the first start does")
            )
            return None
    db = connect(settings.effective_database_url, pool_size=1, timeouts=DbTimeouts.of(settings))
    try:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        db.dispose()
        checks.append(
            Check(
                "database",
                False,
                f"{db.display_url} unreachable: {_first_line(getattr(error, 'orig', error))}",
                "check DATABASE_URL (host, port, password); for Supabase use the connection "
                "string under Project Settings → Database",
            )
        )
        return None
    checks.append(Check("database", True, f"{db.display_url} reachable"))
    return db


def check_schema(db: Database | None, settings: Settings) -> Check:
    """The database's migration revision against the newest this opsdash knows."""
    from opsdash.engine.schema import revisions, schema_status

    if db is None:
        return Check("database schema", False, "not checked: the database is unreachable")
    current, head = schema_status(db)
    if current == head:
        return Check("database schema", True, f"at revision {head} (current)")
    migrate = (
        "run `opsdash migrate` (or start opsdash once: the embedded mode migrates by itself)"
        if not settings.is_postgres
        else "run `opsdash migrate` (see docs/production.md, upgrades)"
    )
    if current is None:
        return Check("database schema", False, "no opsdash schema (unversioned)", migrate)
    if current not in revisions():
        return Check(
            "database schema",
            False,
            f"at revision {current}, newer than this opsdash ({head})",
            "upgrade opsdash on this machine: the database was migrated by a newer version",
        )
    return Check("database schema", False, f"at revision {current}, older than {head}", migrate)


def check_clock(db: Database | None) -> Check:
    if db is None:
        return Check("clock", False, "not checked: the database is unreachable")
    if not db.is_postgres:
        return Check("clock", True, "SQLite runs on this machine's clock")
    before = time.time()
    with db.read() as conn:
        database_now = conn.execute(text("SELECT now()")).scalar_one()
    after = time.time()
    skew = database_now.timestamp() - (before + after) / 2
    detail = f"database clock {skew:+.2f} s from this machine's"
    if abs(skew) > MAX_CLOCK_SKEW_S:
        return Check(
            "clock",
            False,
            detail,
            "synchronise this machine's clock (systemd-timesyncd / chrony); leases and retry "
            "times compare it with the database's",
        )
    return Check("clock", True, detail)


# --- storage ------------------------------------------------------------------------------


def check_storage(settings: Settings) -> Check:
    if not settings.uses_supabase:
        return _check_local_folder(settings)
    from storage3 import SyncStorageClient
    from storage3.exceptions import StorageApiError

    assert settings.supabase_url and settings.supabase_service_role_key
    key = settings.supabase_service_role_key
    client = SyncStorageClient(
        f"{settings.supabase_url}/storage/v1/",
        {"apikey": key, "Authorization": f"Bearer {key}"},
        timeout=int(HTTP_TIMEOUT_S),
    )
    bucket = settings.blob_bucket
    try:
        found = client.get_bucket(bucket)
    except StorageApiError as error:
        status = str(error.status)
        if status == "404":
            return Check(
                "blob storage",
                False,
                f"bucket {bucket!r} not found ({error.message})",
                "start `opsdash worker` once (it creates the private bucket), or check that "
                "SUPABASE_SERVICE_ROLE_KEY is the service role key (other keys cannot see it)",
            )
        return Check(
            "blob storage",
            False,
            f"Storage answered {status}: {error.message}",
            "SUPABASE_SERVICE_ROLE_KEY must be the project's service role key",
        )
    except httpx.TransportError as error:
        return Check(
            "blob storage",
            False,
            f"Storage at {settings.supabase_url} unreachable: {error!r}",
            "check SUPABASE_URL",
        )
    finally:
        client.session.close()
    if found.public:
        return Check(
            "blob storage",
            False,
            f"bucket {bucket!r} is public: anyone can read the schedules in it",
            "make it private: Storage → bucket settings → turn off 'Public bucket'",
        )
    return Check("blob storage", True, f"bucket {bucket!r} exists and is private")


def _check_local_folder(settings: Settings) -> Check:
    import os

    root = settings.blob_root
    existing = root if root.exists() else next(p for p in root.parents if p.exists())
    if not os.access(existing, os.W_OK):
        return Check(
            "blob storage", False, f"{existing} is not writable", "fix the data folder's owner"
        )
    state = "exists" if root.exists() else "will be created"
    return Check("blob storage", True, f"local folder {root} ({state}, writable)")


# --- Supabase Auth ------------------------------------------------------------------------


def check_auth_admin(settings: Settings) -> Check:
    if not settings.uses_supabase:
        return Check("Auth admin API", None, "not used: no Supabase project configured")
    assert settings.supabase_url and settings.supabase_service_role_key
    key = settings.supabase_service_role_key
    url = f"{settings.supabase_url}{AUTH_USERS_PATH}"
    try:
        response = httpx.get(
            url,
            params={"page": 1, "per_page": 1},
            headers={"apikey": key, "Authorization": f"Bearer {key}"},
            timeout=HTTP_TIMEOUT_S,
        )
    except httpx.TransportError as error:
        return Check("Auth admin API", False, f"{url} unreachable: {error!r}", "check SUPABASE_URL")
    if response.status_code in {401, 403}:
        return Check(
            "Auth admin API",
            False,
            f"{response.status_code}: {_error_text(response)}",
            "SUPABASE_SERVICE_ROLE_KEY must be the service role key (Project Settings → API), "
            "not the anon key",
        )
    body = _json(response)
    if response.status_code != 200 or not isinstance(body.get("users"), list):
        return Check(
            "Auth admin API",
            False,
            f"unexpected answer {response.status_code}: {_error_text(response)}",
            "check SUPABASE_URL: it must be the project URL (https://<ref>.supabase.co)",
        )
    total = response.headers.get("x-total-count")
    counted = f", {total} user{'' if total == '1' else 's'} in Auth" if total is not None else ""
    return Check("Auth admin API", True, f"lists users with the service key{counted}")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: httpx.Response) -> str:
    body = _json(response)
    for field in ("msg", "message", "error_description", "error"):
        if isinstance(body.get(field), str):
            return str(body[field])
    return response.text[:200] or response.reason_phrase


# --- upstream -----------------------------------------------------------------------------


def check_upstream(settings: Settings, db: Database | None) -> Check:
    from opsdash.engine.upstream import MaidCentralClient, RateLimiter, UpstreamError

    demo = None
    if settings.starts_demo_upstream:
        from opsdash.demo.server import DEMO_API_KEY, DemoUpstream

        demo = DemoUpstream(companies=settings.demo_companies, api_key=DEMO_API_KEY)
        url, key, label = demo.start(), DEMO_API_KEY, "built-in demo upstream"
    else:
        url = settings.maidcentral_api_url or ""
        key = settings.maidcentral_api_key or ""
        label = "demo upstream" if settings.uses_demo_upstream else "MaidCentral"
    client = MaidCentralClient(
        url,
        key,
        limiter=RateLimiter(settings.upstream_rate_per_minute, settings.upstream_rate_per_hour),
        timeout_s=min(settings.upstream_timeout_s, 30.0),
        attempts=1,
    )
    try:
        company = _any_company(db)
        if company is not None:
            jobs = client.schedule(date.today(), date.today(), company)
            detail = f"{label} {url}: {len(jobs)} jobs today for company {company} (1 call)"
        else:
            companies = client.users()
            detail = f"{label} {url}: {len(companies)} companies listed (1 call)"
    except UpstreamError as error:
        return Check(
            "upstream",
            False,
            f"{label} {url}: {error}",
            "check MAIDCENTRAL_API_URL and MAIDCENTRAL_API_KEY"
            if settings.maidcentral_api_url
            else "",
        )
    finally:
        client.close()
        if demo is not None:
            demo.stop()
    return Check("upstream", True, detail)


def _any_company(db: Database | None) -> str | None:
    """A known company, so the one call asks for one company-day instead of everything."""
    if db is None:
        return None
    try:
        with db.read() as conn:
            return conn.execute(
                select(COMPANIES.c.service_company_id)
                .where(COMPANIES.c.sync_enabled)
                .order_by(COMPANIES.c.service_company_id)
                .limit(1)
            ).scalar()
    except SQLAlchemyError:
        return None


# --- tokens -------------------------------------------------------------------------------


def check_tokens(settings: Settings) -> Check:
    jwks_url = settings.effective_jwks_url
    has_secret = bool(settings.supabase_jwt_secret)
    if jwks_url is None:
        secret_file = settings.data_dir / "jwt-secret"
        where = "exists" if secret_file.is_file() else "is created on first use"
        return Check("token verification", True, f"local HS256 secret {secret_file} ({where})")
    keys, problem = _jwks_keys(jwks_url)
    secret = "HS256 with SUPABASE_JWT_SECRET" if has_secret else ""
    if problem is None and keys:
        listed = f"{len(keys)} signing key{'s' if len(keys) != 1 else ''} ({', '.join(keys)})"
        return Check("token verification", True, " + ".join(filter(None, [secret, listed])))
    if has_secret:
        reason = problem or "the JWKS lists no keys"
        return Check("token verification", True, f"{secret}; ES256/RS256 unavailable: {reason}")
    return Check(
        "token verification",
        False,
        f"{jwks_url}: {problem or 'no signing keys listed'}",
        "the project signs tokens with its legacy JWT secret: set SUPABASE_JWT_SECRET "
        "(Project Settings → API → JWT Settings), or check SUPABASE_URL",
    )


def _jwks_keys(url: str) -> tuple[list[str], str | None]:
    """The key ids (with algorithms) the JWKS lists, or why it could not be read."""
    from jwt import PyJWKSet
    from jwt.exceptions import PyJWKSetError

    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
    except httpx.TransportError as error:
        return [], f"unreachable: {error!r}"
    if response.status_code != 200:
        return [], f"answered {response.status_code}"
    try:
        keys = PyJWKSet.from_dict(response.json()).keys
    except (ValueError, PyJWKSetError) as error:
        return [], f"not a usable JWKS: {error}"
    return [f"{key.key_id or '?'} {key.algorithm_name}" for key in keys], None


# --- the table ----------------------------------------------------------------------------


def render(checks: list[Check], settings: Settings) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", expand=False, box=None, padding=(0, 1))
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result")
    table.add_column("fix")
    for check in checks:
        mark = (
            Text("-", style="dim")
            if check.ok is None
            else Text("✓", style="green")
            if check.ok
            else Text("✗", style="bold red")
        )
        table.add_row(mark, check.name, check.detail, check.fix)
    source = settings.config_file_read
    heading = Text.assemble(
        ("opsdash doctor", "bold"),
        f" · mode {settings.mode.value.upper()} · ",
        f"configuration: {source if source else 'environment only'} · ",
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    failed = sum(1 for check in checks if check.ok is False)
    verdict = (
        Text(f"{failed} check{'s' if failed != 1 else ''} failed", style="bold red")
        if failed
        else Text("all checks passed", style="green")
    )
    return Group(heading, table, verdict)


def exit_status(checks: list[Check]) -> int:
    return 1 if any(check.ok is False for check in checks) else 0
