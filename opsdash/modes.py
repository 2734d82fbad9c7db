"""Which mode the settings choose, and the refusal when they choose none completely.

- **Embedded demo**: nothing set. SQLite and local blobs in the data folder, the
  demo upstream on a loopback port, a local token secret.
- **Demo, asked for** (``--demo`` / ``OPSDASH_DEMO=1``): the demo upstream against
  whatever database (and, when its whole set is given, Supabase project) is named.
  ``MAIDCENTRAL_API_URL`` may then name an ``opsdash demo-upstream`` shared by
  several processes.
- **Supabase** (production): a Postgres ``DATABASE_URL``, any ``SUPABASE_*`` or any
  ``MAIDCENTRAL_*`` means production, and production needs the whole set. Never a
  silent fallback: a typo in one name must not start the demo upstream against the
  real database, or send blobs to a local folder.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opsdash.config import ConfigurationError, Mode

if TYPE_CHECKING:
    from opsdash.config import Settings


@dataclass(frozen=True)
class Requirement:
    name: str
    purpose: str
    field: str


DATABASE = Requirement(
    "DATABASE_URL",
    "the Supabase project's Postgres (postgresql://…): the job queue, companies, profiles "
    "and schedule metadata that every opsdash process and the portal share",
    "database_url",
)
SUPABASE_URL = Requirement(
    "SUPABASE_URL",
    "the project URL (https://<ref>.supabase.co): Storage for the schedule blobs, the Auth "
    "admin API for portal users, and the signing keys (JWKS) that verify portal tokens",
    "supabase_url",
)
SERVICE_KEY = Requirement(
    "SUPABASE_SERVICE_ROLE_KEY",
    "the project's service role key: writes blobs to the private bucket and manages Auth users",
    "supabase_service_role_key",
)
UPSTREAM_URL = Requirement(
    "MAIDCENTRAL_API_URL",
    "the MaidCentral API base URL that schedules and users are fetched from",
    "maidcentral_api_url",
)
UPSTREAM_KEY = Requirement(
    "MAIDCENTRAL_API_KEY", "the MaidCentral API key (sent as a Bearer token)", "maidcentral_api_key"
)
PRODUCTION_SET = (DATABASE, SUPABASE_URL, SERVICE_KEY, UPSTREAM_URL, UPSTREAM_KEY)
SUPABASE_SET = (SUPABASE_URL, SERVICE_KEY)
SUPABASE_FIELDS = ("supabase_url", "supabase_service_role_key", "supabase_jwt_secret")
UPSTREAM_FIELDS = ("maidcentral_api_url", "maidcentral_api_key")
DEMO_HINT = "--demo (or OPSDASH_DEMO=1)"


def _is_set(settings: Settings, field: str) -> bool:
    return getattr(settings, field) is not None


def production_signals(settings: Settings) -> list[str]:
    """The settings that say "this is production", by the names the operator set."""
    from opsdash.config import setting_name

    signals = []
    if settings.database_url and settings.database_url.startswith("postgresql"):
        signals.append("DATABASE_URL (Postgres)")
    signals += [
        setting_name(field)
        for field in (*SUPABASE_FIELDS, *UPSTREAM_FIELDS)
        if _is_set(settings, field)
    ]
    return signals


def mode_of(settings: Settings) -> Mode:
    if settings.demo or not production_signals(settings):
        return Mode.DEMO
    return Mode.SUPABASE


def _missing_lines(missing: list[Requirement]) -> str:
    width = max(len(requirement.name) for requirement in missing)
    return "\n".join(
        f"  {requirement.name.ljust(width)}  {requirement.purpose}" for requirement in missing
    )


# Prefixes of the names an operator sets opsdash by; a near miss among them is a typo.
SETTING_PREFIXES = ("OPSDASH_", "SUPABASE_", "MAIDCENTRAL_", "DATABASE_")
NEAR_MISS_CUTOFF = 0.85
# Set by Supabase's own platform and tools in the environments opsdash runs in; they
# resemble opsdash's names without being typos of them.
OTHER_TOOLS_NAMES = frozenset(
    {
        "SUPABASE_DB_URL",
        "SUPABASE_ANON_KEY",
        "SUPABASE_PUBLISHABLE_KEY",
        "SUPABASE_SECRET_KEY",
        "SUPABASE_ACCESS_TOKEN",
        "SUPABASE_PROJECT_ID",
        "SUPABASE_PROJECT_REF",
        "SUPABASE_DB_PASSWORD",
    }
)


def known_names(settings: type[Settings]) -> set[str]:
    """Every environment name a setting is read by (``OPSDASH_X`` and the standard one)."""
    from opsdash.config import setting_name

    names = set()
    for field, info in settings.model_fields.items():
        names.add(setting_name(field))
        names.add(f"OPSDASH_{field.upper()}")
        choices = getattr(info.validation_alias, "choices", ())
        names.update(choice for choice in choices if isinstance(choice, str) and choice.isupper())
    return names


def misspelt_names(settings: type[Settings], environment: Mapping[str, str]) -> list[str]:
    """Set names that are not settings but nearly are: "X (did you mean Y?)".

    A typo in a production name (``MAIDCENTRAL_APIURL``) would otherwise be ignored
    without a word, and opsdash would start in another mode than the one meant.
    """
    known = known_names(settings)
    found = []
    for name in sorted(environment):
        if name in known or name in OTHER_TOOLS_NAMES or not name.startswith(SETTING_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=NEAR_MISS_CUTOFF)
        if close:
            found.append(f"{name} (did you mean {close[0]}?)")
    return found


def check_complete(settings: Settings) -> None:
    """Raise :class:`ConfigurationError` unless the settings choose one mode completely,
    or when the environment sets a name that is nearly, but not, a setting."""
    misspelt = misspelt_names(type(settings), os.environ)
    try:
        _check_mode(settings)
    except ConfigurationError as refusal:
        if misspelt:
            raise ConfigurationError(f"{refusal}\n{_misspelt_lines(misspelt)}") from None
        raise
    if misspelt:
        raise ConfigurationError(_misspelt_lines(misspelt))


def _misspelt_lines(misspelt: list[str]) -> str:
    return "Not a setting opsdash knows, so it would be ignored:\n" + "\n".join(
        f"  {line}" for line in misspelt
    )


def _check_mode(settings: Settings) -> None:
    if settings.demo:
        _check_demo(settings)
        return
    signals = production_signals(settings)
    if signals:
        _check_production(settings, signals)
    elif settings.database_url is not None:
        raise ConfigurationError(
            f"DATABASE_URL names a database other than the embedded default "
            f"({settings.database_url.split('?')[0]}), and no MaidCentral API is set, so "
            f"the demo upstream would write its demo companies and users there.\n"
            f"Run the demo against it on purpose with {DEMO_HINT}, or set the production "
            f"variables:\n{_missing_lines(list(PRODUCTION_SET[1:]))}"
        )


def _check_production(settings: Settings, signals: list[str]) -> None:
    missing = [r for r in PRODUCTION_SET if not _is_set(settings, r.field)]
    problems = []
    if missing:
        problems.append(
            f"{', '.join(signals)} {'is' if len(signals) == 1 else 'are'} set, so opsdash runs "
            f"in production (Supabase) mode, which needs the whole set. Missing:\n"
            f"{_missing_lines(missing)}"
        )
    if settings.database_url and not settings.database_url.startswith("postgresql"):
        problems.append(
            f"DATABASE_URL: production keeps the queue in the Supabase project's Postgres "
            f"(postgresql://…), not {settings.database_url.split(':')[0]}"
        )
    if problems:
        problems.append(f"To try opsdash on demo data instead, unset these or pass {DEMO_HINT}.")
        raise ConfigurationError("\n".join(problems))


def _check_demo(settings: Settings) -> None:
    missing: list[Requirement] = []
    if any(_is_set(settings, field) for field in SUPABASE_FIELDS):
        missing += [r for r in SUPABASE_SET if not _is_set(settings, r.field)]
    if any(_is_set(settings, field) for field in UPSTREAM_FIELDS):
        missing += [r for r in (UPSTREAM_URL, UPSTREAM_KEY) if not _is_set(settings, r.field)]
    if missing:
        raise ConfigurationError(
            f"demo mode ({DEMO_HINT}) with a partial set: a Supabase project needs both "
            f"SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY, and a shared demo upstream both "
            f"MAIDCENTRAL_API_URL and MAIDCENTRAL_API_KEY. Missing:\n{_missing_lines(missing)}"
        )
