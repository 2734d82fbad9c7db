"""One typed settings object, built once at start-up and passed down.

Sources, highest priority first: keyword arguments (the command line's
choices), environment variables (``OPSDASH_*`` plus the standard names
``DATABASE_URL``, ``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``,
``SUPABASE_JWT_SECRET``, ``MAIDCENTRAL_API_URL``, ``MAIDCENTRAL_API_KEY``), then
one TOML file: the one named by ``--config`` / ``OPSDASH_CONFIG``, else
``opsdash.toml`` in the data folder. Never a file in the working directory:
whoever can write where the operator happens to stand must not be able to set
the JWT secret or the CORS origins.

The mode is explicit (see :mod:`opsdash.modes`): nothing set is the embedded
demo; any production setting requires the whole production set, and a partial
set is refused at load time with one message naming what is missing.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from apscheduler.triggers.cron import CronTrigger
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from opsdash.datafolder import read_or_create_secret

CONFIG_FILE_NAME = "opsdash.toml"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
MIN_JWT_SECRET_BYTES = 32


class Mode(StrEnum):
    DEMO = "demo"  # the demo upstream (the zero-configuration default, or --demo)
    SUPABASE = "supabase"  # production: Supabase Postgres + Storage + Auth, real MaidCentral


class ConfigurationError(ValueError):
    """Opsdash cannot start as configured; the message says what to set and why."""


def _env(name: str) -> AliasChoices:
    """Accept both ``OPSDASH_NAME`` and the standard unprefixed name."""
    return AliasChoices(f"OPSDASH_{name}", name)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("opsdash"))


def config_file_for(explicit: Path | str | None, data_dir: Path | str | None) -> Path | None:
    """The one configuration file to read: the explicit one, else the data folder's, if any."""
    if explicit:
        return Path(explicit).expanduser()
    candidate = Path(data_dir or default_data_dir()).expanduser() / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def _from_state(state: dict[str, Any], *names: str) -> Any:
    # Earlier sources key a value by field name or by whichever alias matched.
    lowered = {str(key).lower(): value for key, value in state.items()}
    for name in names:
        if lowered.get(name.lower()) not in (None, ""):
            return lowered[name.lower()]
    return None


class ConfigFileSource(PydanticBaseSettingsSource):
    """The TOML file, found from the settings that come before it (never the cwd)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        explicit = _from_state(self.current_state, "config_file", "OPSDASH_CONFIG")
        data_dir = _from_state(self.current_state, "data_dir", "OPSDASH_DATA_DIR")
        path = config_file_for(explicit, data_dir)
        if path is None:
            return {}
        if not path.is_file():
            raise ConfigurationError(
                f"OPSDASH_CONFIG / --config names {str(path)!r}, which is not a file"
            )
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigurationError(f"cannot read the config file {path}: {error}") from None
        if not explicit and {"data_dir", "config_file"} & set(values):
            raise ConfigurationError(
                f"{path} is found through the data folder, so it cannot move the data folder "
                "or name another config file (set OPSDASH_DATA_DIR or --config instead)"
            )
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPSDASH_",
        extra="ignore",
        populate_by_name=True,
        # Each field's docstring is its description (README's settings table follows them).
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    """The data folder: the SQLite file, local blobs, the local JWT secret and
    ``opsdash.toml``; default the per-user data folder (``~/.local/share/opsdash``)."""
    config_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("OPSDASH_CONFIG", "config_file")
    )
    """The TOML settings file (``--config``); unset: ``opsdash.toml`` in the data folder, if any."""
    demo: bool = False
    """Run the demo upstream against a database that is not the default (``--demo``)."""
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    """``postgresql://…`` (the Supabase project's Postgres) in production; unset: a SQLite
    file in the data folder."""
    db_pooler: Literal["auto", "transaction", "none"] = "auto"
    """``transaction`` when a transaction-mode pooler (PgBouncer, Supabase's) is in front of
    Postgres: no server-side prepared statements, no session state; ``auto`` says yes for
    port 6543 or ``?pgbouncer=true`` in the URL."""
    db_connect_timeout_s: float = Field(default=5.0, ge=2, le=60)
    """How long connecting to the database may take (a frozen server accepts TCP and never
    answers: every wait on it is bounded, so callers get an error instead)."""
    db_statement_timeout_s: float = Field(default=30.0, gt=0, le=300)
    """The server's ``statement_timeout``; the client gives up waiting for a reply one
    second later. Generous, since one wait can cover a pipelined batch."""
    db_pool_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long a caller waits for a free pooled connection."""
    blob_bucket: str = "schedule-data"
    """The Supabase Storage bucket the schedule blobs are kept in (created private if missing)."""
    storage_connect_timeout_s: float = Field(default=3.0, gt=0)
    """Every storage call gives up connecting after this long."""
    storage_read_timeout_s: float = Field(default=5.0, gt=0)
    """Every storage call gives up waiting for an answer after this long."""
    storage_check_interval_s: float = Field(default=60.0, gt=0)
    """How often a running engine rechecks that storage answers and the bucket is private."""
    schedule_retention_days: int = Field(default=30, ge=1)
    """Schedule days older than this many days before the company's local today are
    removed from storage and ``schedule_data`` by the hourly maintenance."""

    supabase_url: str | None = Field(default=None, validation_alias=_env("SUPABASE_URL"))
    """The Supabase project (``https://<ref>.supabase.co``): Storage, the Auth admin API and
    the signing keys (JWKS) that verify portal tokens."""
    supabase_service_role_key: str | None = Field(
        default=None, validation_alias=_env("SUPABASE_SERVICE_ROLE_KEY")
    )
    """The project's service role key: writes blobs to the private bucket, manages Auth users."""
    supabase_jwt_secret: str | None = Field(
        default=None, validation_alias=_env("SUPABASE_JWT_SECRET")
    )
    """The project's legacy HS256 token secret; in the embedded demo a local secret in the
    data folder is used instead."""
    jwks_url: str | None = None
    """Another JWKS for ES256/RS256 tokens; unset: the Supabase project's."""
    jwt_audience: str | None = None
    """The ``aud`` a token must carry; unset: not checked."""
    jwt_issuer: str | None = None
    """The ``iss`` a token must carry; unset: not checked."""

    maidcentral_api_url: str | None = Field(
        default=None, validation_alias=_env("MAIDCENTRAL_API_URL")
    )
    """The MaidCentral API that schedules and users come from; with ``demo``, a shared
    ``opsdash demo-upstream``; unset with nothing else set: the built-in demo upstream."""
    maidcentral_api_key: str | None = Field(
        default=None, validation_alias=_env("MAIDCENTRAL_API_KEY")
    )
    """The MaidCentral API key (sent as a Bearer token)."""
    upstream_timeout_s: float = Field(default=20.0, gt=0, le=60)
    """How long one upstream request may take. MaidCentral answers a week of one company
    in well under a second; a request hanging longer holds a worker and its jobs."""
    upstream_attempts: int = Field(default=3, ge=1)
    """Tries per upstream call for a 5xx, a timeout or a truncated answer, before the job fails."""
    upstream_backoff_max_s: float = Field(default=8.0, ge=0)
    """The longest wait between those tries (jittered exponential)."""
    upstream_rate_per_minute: int = Field(default=100, ge=1)
    """Upstream requests a minute, shared by all workers of a process."""
    upstream_rate_per_hour: int = Field(default=1000, ge=1)
    """Upstream requests an hour, shared by all workers of a process."""
    demo_companies: int = Field(default=6, ge=1)
    """How many companies the built-in demo upstream serves."""

    workers: int = Field(default=4, ge=0)
    """Worker threads per process."""
    poll_interval_s: float = Field(default=2.0, gt=0)
    """How often idle workers look for due jobs (they wake at once for local enqueues)."""
    lease_s: float = Field(default=60.0, gt=0)
    """A running job's lease: a heartbeat renews it, rescue requeues an expired one."""
    sync_cron: str = "0 * * * *"
    """When the coordinator queues a sync run (a cron expression, UTC)."""
    days_ahead: int = Field(default=7, ge=1, le=60)
    """Days synced per company, from the company's own local today."""
    max_attempts: int = Field(default=3, ge=1)
    """Attempts a job gets before it is failed."""
    retry_base_s: float = Field(default=10.0, ge=0)
    """Backoff base between a job's attempts (exponential, jittered)."""
    retention_days: int = Field(default=14, ge=1)
    """Finished jobs older than this are rolled into ``job_stats`` and deleted."""

    cors_origins: list[str] = Field(default_factory=list)
    """Portal origins the read API allows by CORS (a JSON list)."""

    # The read API facing abusive clients (opsdash.readapi.protocol, docs/production.md).
    http_max_connections: int = Field(default=1000, ge=1)
    """Connections one read API process holds at once (kept below its file descriptor limit)."""
    http_request_timeout_s: float = Field(default=10.0, gt=0)
    """How long a client may take to send a whole request (from its first byte, or from
    connecting) before it is answered 408 and the connection closed."""
    http_keep_alive_s: float = Field(default=5.0, gt=0)
    """How long an idle kept-alive connection stays open."""
    ops_endpoints: Literal["auto", "open", "token", "off"] = "auto"
    """Who reaches ``/metrics``, ``/docs`` and ``/openapi.json``: ``auto`` is open on a loopback
    address and, elsewhere, behind ``ops_token`` when one is set, else off."""
    ops_token: str | None = Field(default=None, min_length=32)
    """The bearer token for the operator endpoints (at least 32 characters)."""

    freshness_grace_s: float = Field(default=900.0, ge=0)
    """How long past one sync cadence a company's data may be before it counts as late
    (a sync run needs time to get round every company)."""
    freshness_cadence_s: float | None = Field(default=None, gt=0)
    """The sync cadence freshness is judged against; unset: the longest gap of ``sync_cron``."""
    ledger_retention_days: int = Field(default=90, ge=1)
    """How long the run ledger keeps a sync run's figures, and the audit trail an
    operator's action."""

    alert_webhook_url: str | None = None
    """Where alerts are POSTed as JSON; unset: no webhook."""
    alert_webhook_format: Literal["json", "slack"] = "json"
    """``json``: a generic body (with a ``text`` field too); ``slack``: ``{"text": …}`` only."""
    alert_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Recipients of alert e-mails (a JSON list, or one address); needs ``smtp_url``."""
    alert_email_from: str | None = None
    """The alert e-mails' sender; unset: ``opsdash@<host name>``."""
    smtp_url: str | None = None
    """``smtp://user:pass@host:587`` (STARTTLS when offered) or ``smtps://…`` (TLS)."""
    alert_reminder_hours: float = Field(default=6.0, gt=0)
    """An alert still open is sent again at most this often."""
    alert_summary_threshold: int = Field(default=5, ge=1)
    """More alerts than this opening (or resolving) at once are sent as one summary."""
    alert_outage_s: float = Field(default=120.0, ge=0)
    """The database or storage must be unreachable this long before an alert is sent."""
    alert_delivery_attempts: int = Field(default=8, ge=1)
    """Attempts to deliver one alert message to one channel, with backoff between them."""
    alert_retry_base_s: float = Field(default=5.0, ge=0)
    """Backoff base between attempts to deliver an alert (exponential, at most 15 minutes)."""
    alert_interval_s: float = Field(default=30.0, gt=0)
    """How often alert conditions are evaluated and the outbox is delivered."""

    web_max_sessions: int = Field(default=8, ge=1)
    """How many browser consoles ``opsdash web`` runs at once (each is a console process)."""
    web_session_hours: float = Field(default=12.0, gt=0)
    """How long a browser sign-in lasts (sign-out or restarting ``opsdash web`` ends it sooner)."""
    web_signin_failures: int = Field(default=5, ge=1)
    """Failed sign-ins allowed per client address and per name in ``web_signin_window_s``."""
    web_signin_window_s: float = Field(default=300.0, gt=0)
    """The window over which failed sign-ins are counted; a blocked client waits out its rest."""
    web_shared_reads: bool = True
    """Browser consoles read through one refresh in the ``opsdash web`` process (each read
    at most once per ``web_refresh_s``) instead of each querying the database itself."""
    web_refresh_s: float = Field(default=1.0, gt=0)
    """How often the shared reads of browser consoles run at most (the console polls each
    second)."""
    shared_reads_socket: Path | None = None
    """Set by ``opsdash web`` for its consoles: where its shared reads answer."""
    web_trusted_proxy: str | None = None
    """The one peer address whose X-Forwarded-For/-Proto/-Host headers ``opsdash web``
    believes; unset: none (the TCP peer is the client)."""
    web_tls_cert: Path | None = None
    """A PEM certificate chain for ``opsdash web`` to serve https itself (with ``web_tls_key``)."""
    web_tls_key: Path | None = None
    """The private key of ``web_tls_cert``."""
    environment: str | None = Field(default=None, max_length=40)
    """The deployment's name (``production``, ``staging``, ``dev``, free text), shown in
    the console's header so nobody acts on the wrong one: red for production, amber for
    staging, another colour for anything else; unset: no banner."""
    operator: str | None = None
    """The operator the console runs as, looked up in the ``operators`` table (the browser
    console's server sets it for the operator who signed in); unset: the terminal's user,
    with full rights."""
    console: Literal["terminal", "web"] = "terminal"
    """Which kind of console this is, as the audit trail records it (``web`` needs
    ``operator``)."""

    @field_validator("alert_email_to", mode="before")
    @classmethod
    def _one_or_many_addresses(cls, value: object) -> object:
        # An environment variable holding one plain address is the common case.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("web_trusted_proxy")
    @classmethod
    def _proxy_address(cls, address: str | None) -> str | None:
        # Compared with the TCP peer's address, so it must be one, not a host name.
        if address is None or not address.strip():
            return None
        return str(ipaddress.ip_address(address.strip()))

    @field_validator(
        "database_url",
        "supabase_url",
        "supabase_service_role_key",
        "supabase_jwt_secret",
        "maidcentral_api_url",
        "maidcentral_api_key",
        "jwks_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `FOO=` in an environment file means "not set", not "set to nothing".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("demo", mode="before")
    @classmethod
    def _blank_is_false(cls, value: Any) -> Any:
        return False if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres_url(cls, url: str | None) -> str | None:
        # Supabase hands out postgres:// URLs; SQLAlchemy needs the driver named.
        if url is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @field_validator("supabase_jwt_secret")
    @classmethod
    def _strong_jwt_secret(cls, secret: str | None) -> str | None:
        # Anyone who can guess the HS256 secret can mint an admin token for every company.
        if secret is not None and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"SUPABASE_JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes: use the "
                "project's JWT secret from the Supabase dashboard, not a made-up one"
            )
        return secret

    @field_validator("supabase_url", "maidcentral_api_url", "jwks_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")

    @field_validator("sync_cron")
    @classmethod
    def _cron_parses(cls, expression: str) -> str:
        try:
            CronTrigger.from_crontab(expression, timezone="UTC")
        except ValueError as error:
            raise ValueError(f"{expression!r} is not a cron expression: {error}") from None
        return expression

    @model_validator(mode="after")
    def _mode_is_complete(self) -> Settings:
        from opsdash.modes import check_complete

        check_complete(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, ConfigFileSource(settings_cls))

    # --- what the settings mean ----------------------------------------------------------

    @property
    def config_file_read(self) -> Path | None:
        """The configuration file these settings were read from, if any."""
        return config_file_for(self.config_file, self.data_dir)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'opsdash.db'}"

    @property
    def is_postgres(self) -> bool:
        return self.effective_database_url.startswith("postgresql")

    @property
    def mode(self) -> Mode:
        from opsdash.modes import mode_of

        return mode_of(self)

    @property
    def uses_demo_upstream(self) -> bool:
        return self.mode is Mode.DEMO

    @property
    def starts_demo_upstream(self) -> bool:
        """Demo mode without a URL: the engine serves the demo upstream itself."""
        return self.uses_demo_upstream and not self.maidcentral_api_url

    @property
    def uses_supabase(self) -> bool:
        """A Supabase project is configured (Storage, Auth admin API, JWKS)."""
        return self.supabase_url is not None

    @property
    def effective_blob_backend(self) -> str:
        return "supabase" if self.uses_supabase else "local"

    @property
    def blob_root(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def effective_jwks_url(self) -> str | None:
        """Where ES256/RS256 signing keys come from: the explicit URL, else the project's."""
        if self.jwks_url:
            return self.jwks_url
        if self.supabase_url:
            return self.supabase_url + JWKS_PATH
        return None

    def jwt_secret(self) -> str | None:
        """The HS256 secret: Supabase's when configured; none when tokens come from a JWKS
        only (a local secret then would be a second, unmanaged way in); else a local one
        kept in the data folder, created only in the embedded default."""
        if self.supabase_jwt_secret:
            return self.supabase_jwt_secret
        if self.effective_jwks_url:
            return None
        return read_or_create_secret(self.data_dir, "jwt-secret")


# --- loading, with one readable message for whatever is wrong --------------------------------

_STANDARD_NAMES = {
    "database_url": "DATABASE_URL",
    "supabase_url": "SUPABASE_URL",
    "supabase_service_role_key": "SUPABASE_SERVICE_ROLE_KEY",
    "supabase_jwt_secret": "SUPABASE_JWT_SECRET",
    "maidcentral_api_url": "MAIDCENTRAL_API_URL",
    "maidcentral_api_key": "MAIDCENTRAL_API_KEY",
    "config_file": "OPSDASH_CONFIG",
}
# Never echoed in a refusal: keys, and URLs that may carry a password or a token.
_SECRET_FIELDS = {
    "database_url",
    "supabase_service_role_key",
    "supabase_jwt_secret",
    "maidcentral_api_key",
    "ops_token",
    "smtp_url",
    "alert_webhook_url",
}


def setting_name(field: str) -> str:
    """The name an operator sets a field by (the environment variable)."""
    return _STANDARD_NAMES.get(field, f"OPSDASH_{field.upper()}")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the setting as the operator sets it."""
    lines: list[str] = []
    for problem in error.errors():
        cause = (problem.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigurationError):
            lines.append(str(cause))
            continue
        field = str(problem["loc"][0]) if problem["loc"] else ""
        name = setting_name(field) if field else "configuration"
        message = str(problem["msg"]).removeprefix("Value error, ")
        given = repr(problem.get("input"))
        shown = "" if field in _SECRET_FIELDS or given in message else f" (got {given})"
        lines.append(f"{name}: {message}{shown}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings for a command: keyword overrides (the command line) over env over file.

    Raises :class:`ConfigurationError` with a message fit to print as it is.
    """
    chosen = {key: value for key, value in overrides.items() if value not in (None, False)}
    try:
        return Settings(**chosen)
    except ValidationError as error:
        raise ConfigurationError(describe_validation_error(error)) from None
    except SettingsError as error:
        raise ConfigurationError(describe_settings_error(error)) from None


def describe_settings_error(error: SettingsError) -> str:
    """A value the environment source could not even parse (a list that is not JSON)."""
    found = re.search(r'field "(\w+)"', str(error))
    name = setting_name(found[1]) if found else "configuration"
    cause = error.__cause__
    detail = f" ({cause})" if cause is not None else ""
    if str(error).startswith("error parsing value"):
        # Only list-valued settings are parsed from the environment, as JSON.
        return f'{name}: not a JSON list such as ["https://a.example"]{detail}'
    return f"{name}: cannot be read{detail}"
