"""Portal users in Supabase Auth: the users sync keeps ``auth.users`` in step with the upstream.

The portal signs users in with Supabase Auth and the read API finds a profile by the
token's ``sub``, so every upstream user needs an Auth user whose id is their profile id.
:func:`reconcile` lists the Auth users once (paged, 1,000 a page), works out what each
upstream user needs, and makes only the calls that change something:

- a new user is created without a password (the portal signs in by magic link or OTP),
  email confirmed, with the upstream ``UserId`` as their Auth id;
- an Auth user with the same email that opsdash does not know yet (made by an earlier
  system) is adopted: their id is kept and becomes the profile id;
- email, role, company and employee id changes are applied (``app_metadata``);
- a user the upstream no longer lists is banned, never deleted; a returning one unbanned.

One bad user never stops the others: each failure is recorded with the email and the
reason. The admin calls go through supabase-py's admin client (the object that
``create_client(...).auth.admin`` is), a bounded number at a time.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

if TYPE_CHECKING:
    # supabase_auth is imported only when a Supabase project is configured: it takes about
    # a second to import, which every process start (read API workers included) would pay.
    from supabase_auth.errors import AuthError
    from supabase_auth.types import AdminUserAttributes, User

log = logging.getLogger("opsdash.auth_users")

PAGE_SIZE = 1000
# Auth has no permanent ban; a century is one. "none" lifts a ban.
BAN_DURATION = "876000h"
UNBAN = "none"
# After this many calls in a row fail for a reason that is not the user's (5xx, 429,
# unreachable), the rest are not attempted: the Auth server is down, not the users bad.
FAILURE_STREAK_LIMIT = 25
MAX_RECORDED_FAILURES = 200
# The keys opsdash owns in an Auth user's app_metadata; other keys are left alone.
METADATA_KEYS = (
    "maidcentral_user_id",
    "company_id",
    "service_company_id",
    "role",
    "employee_information_id",
)


class AuthAdminError(RuntimeError):
    """An admin API call failed; ``retryable`` when the server, not the request, is at fault."""

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True)
class AuthUser:
    id: uuid.UUID
    email: str | None
    app_metadata: Mapping[str, Any]
    banned: bool

    @property
    def maidcentral_user_id(self) -> str | None:
        value = self.app_metadata.get("maidcentral_user_id")
        return value if isinstance(value, str) else None


def _is_banned(banned_until: str | None, now: datetime) -> bool:
    if not banned_until:
        return False
    try:
        until = datetime.fromisoformat(banned_until.replace("Z", "+00:00"))
    except ValueError:
        return True  # unreadable: treat as banned, so a listed user gets it lifted
    return until.replace(tzinfo=until.tzinfo or UTC) > now


def _auth_user(user: User, now: datetime) -> AuthUser:
    return AuthUser(
        id=uuid.UUID(user.id),
        email=user.email.lower() if user.email else None,
        app_metadata=dict(user.app_metadata or {}),
        banned=_is_banned(user.banned_until, now),
    )


def _translate(error: AuthError) -> AuthAdminError:
    from supabase_auth.errors import AuthRetryableError

    status = getattr(error, "status", 0) or 0
    retryable = isinstance(error, AuthRetryableError) or status == 429 or status >= 500
    code = getattr(error, "code", None)
    detail = f"{status} {code}: {error.message}" if status else error.message
    return AuthAdminError(detail, code=code, retryable=retryable)


class AuthAdmin:
    """Supabase Auth's admin API (``/auth/v1/admin/users``) with the service role key.

    Calls that fail for the server's reasons (5xx, 429, unreachable) are retried a few
    times with jittered backoff; the client is safe to share between threads.
    """

    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        concurrency: int = 8,
        timeout_s: float = 30.0,
        attempts: int = 3,
        max_backoff_s: float = 4.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self._attempts = max(1, attempts)
        self._max_backoff_s = max_backoff_s
        self._http = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=self.concurrency + 2),
            follow_redirects=True,
        )
        from supabase_auth import SyncGoTrueAdminAPI

        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        self._api = SyncGoTrueAdminAPI(
            url=f"{self.url}/auth/v1", headers=headers, http_client=self._http
        )

    def _call(self, action: Callable[[], Any]) -> Any:
        from supabase_auth.errors import AuthError

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._max_backoff_s, jitter=0.1),
            retry=retry_if_exception(lambda e: isinstance(e, AuthAdminError) and e.retryable),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    return action()
                except AuthError as error:
                    raise _translate(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def list_all(self) -> list[AuthUser]:
        """Every Auth user, a page of :data:`PAGE_SIZE` at a time."""
        now = datetime.now(UTC)
        users: list[AuthUser] = []
        page = 1
        while True:
            batch: list[User] = self._call(
                partial(self._api.list_users, page=page, per_page=PAGE_SIZE)
            )
            users += [_auth_user(user, now) for user in batch]
            if len(batch) < PAGE_SIZE:
                return users
            page += 1

    def ping(self) -> None:
        """One small admin call: raises :class:`AuthAdminError` unless the key is accepted."""
        self._call(lambda: self._api.list_users(page=1, per_page=1))

    def create(self, user_id: uuid.UUID, email: str, app_metadata: dict[str, Any]) -> AuthUser:
        attributes: AdminUserAttributes = {
            "id": str(user_id),
            "email": email,
            "email_confirm": True,
            "app_metadata": app_metadata,
        }
        created = self._call(lambda: self._api.create_user(attributes))
        return _auth_user(created.user, datetime.now(UTC))

    def update(self, user_id: uuid.UUID, attributes: AdminUserAttributes) -> AuthUser:
        updated = self._call(lambda: self._api.update_user_by_id(str(user_id), attributes))
        return _auth_user(updated.user, datetime.now(UTC))

    def close(self) -> None:
        self._http.close()


# --- reconciliation ------------------------------------------------------------------------


@dataclass(frozen=True)
class WantedUser:
    """An upstream user as Auth should hold them."""

    maidcentral_user_id: uuid.UUID
    email: str | None
    company_id: uuid.UUID
    service_company_id: str
    role: str
    employee_information_id: str | None

    def app_metadata(self) -> dict[str, Any]:
        return {
            "maidcentral_user_id": str(self.maidcentral_user_id),
            "company_id": str(self.company_id),
            "service_company_id": self.service_company_id,
            "role": self.role,
            # None removes the key (Auth merges app_metadata and drops null values).
            "employee_information_id": self.employee_information_id,
        }


@dataclass
class AuthSyncResult:
    created: int = 0
    updated: int = 0
    adopted: int = 0
    banned: int = 0
    unbanned: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    # upstream UserId → Auth id (= profile id), for every user whose profile is written
    profile_ids: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    # upstream UserIds whose existing profile stays although their Auth call failed
    kept: set[uuid.UUID] = field(default_factory=set)
    aborted: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "adopted": self.adopted,
            "banned": self.banned,
            "unbanned": self.unbanned,
            "failed": self.failed,
            "failures": self.failures[:MAX_RECORDED_FAILURES],
            **({"aborted": self.aborted} if self.aborted else {}),
        }


@dataclass
class _Action:
    """One admin call and what it counts as when it succeeds."""

    email: str
    run: Callable[[], Any]
    counts: tuple[str, ...]
    on_failure: Callable[[], None] = lambda: None


def _metadata_differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in wanted.items())


def reconcile(
    admin: AuthAdmin,
    listing: Iterable[AuthUser],
    wanted: list[WantedUser],
    linked: Mapping[uuid.UUID, uuid.UUID],
) -> AuthSyncResult:
    """Bring Auth in step with ``wanted``; ``linked`` maps upstream ids to existing profile ids.

    ``listing`` is :meth:`AuthAdmin.list_all`, taken before anything changed.
    """
    result = AuthSyncResult()
    by_id = {user.id: user for user in listing}
    by_email = {user.email: user for user in by_id.values() if user.email}
    claimed: dict[uuid.UUID, uuid.UUID] = {}  # Auth id → upstream id, within this run
    # Email → the upstream user that claimed it first in this run. Listing order decides,
    # not which of two concurrent creates the server happens to take first.
    emails: dict[str, uuid.UUID] = {}
    listed = {str(user.maidcentral_user_id) for user in wanted}
    profile_owner = {profile_id: upstream_id for upstream_id, profile_id in linked.items()}
    actions: list[_Action] = []

    def fail(email: str | None, reason: str) -> None:
        result.failed += 1
        result.failures.append({"email": email or "", "reason": reason})
        log.warning("auth user %s: %s", email or "(no email)", reason)

    for user in wanted:
        mc_id = user.maidcentral_user_id
        profile_id = linked.get(mc_id)
        if not user.email:
            fail(None, f"upstream user {mc_id} has no email")
            if profile_id is not None:
                result.kept.add(mc_id)
            continue
        first = emails.get(user.email, mc_id)
        if first != mc_id:
            fail(user.email, f"email is also listed for upstream user {first}, listed first")
            if profile_id is not None:
                result.kept.add(mc_id)
            continue
        current = by_id.get(profile_id) if profile_id else None
        current = current or by_id.get(mc_id)
        adopting = False
        if current is None and user.email in by_email:
            candidate = by_email[user.email]
            owner_id = profile_owner.get(candidate.id) or candidate.maidcentral_user_id
            if owner_id is not None and str(owner_id) != str(mc_id) and str(owner_id) in listed:
                # Another listed upstream user's login: taking it would lock them out.
                fail(user.email, f"email belongs to the Auth user of upstream user {owner_id}")
                if profile_id is not None:
                    result.kept.add(mc_id)
                continue
            current, adopting = candidate, True
        auth_id = current.id if current else (profile_id or mc_id)
        if auth_id in claimed:
            fail(user.email, f"shares Auth user {auth_id} with upstream user {claimed[auth_id]}")
            continue
        claimed[auth_id] = mc_id
        emails[user.email] = mc_id
        metadata = user.app_metadata()
        if current is None:
            actions.append(_create_action(admin, result, user, auth_id, metadata, profile_id))
            continue
        result.profile_ids[mc_id] = current.id
        attributes: AdminUserAttributes = {}
        counts: list[str] = ["adopted"] if adopting else []
        owner = by_email.get(user.email)
        if current.email != user.email:
            if owner is not None and owner.id != current.id:
                fail(user.email, f"email {user.email} belongs to another Auth user {owner.id}")
            else:
                attributes["email"] = user.email
                attributes["email_confirm"] = True
        if _metadata_differs(current.app_metadata, metadata):
            attributes["app_metadata"] = metadata
        if ("email" in attributes or "app_metadata" in attributes) and not adopting:
            counts.append("updated")
        if current.banned:
            attributes["ban_duration"] = UNBAN
            counts.append("unbanned")
        if attributes:
            actions.append(_update_action(admin, user.email, current.id, attributes, counts))
        elif adopting:
            result.adopted += 1

    if wanted:  # an empty directory is more likely an upstream fault than everyone leaving
        for auth_user in by_id.values():
            upstream_id = auth_user.maidcentral_user_id
            departed = upstream_id is not None and upstream_id not in listed
            if departed and not auth_user.banned and auth_user.id not in claimed:
                ban: AdminUserAttributes = {"ban_duration": BAN_DURATION}
                email = auth_user.email or str(auth_user.id)
                actions.append(_update_action(admin, email, auth_user.id, ban, ["banned"]))

    _run_bounded(actions, admin.concurrency, result, fail)
    return result


def _create_action(
    admin: AuthAdmin,
    result: AuthSyncResult,
    user: WantedUser,
    auth_id: uuid.UUID,
    metadata: dict[str, Any],
    profile_id: uuid.UUID | None,
) -> _Action:
    assert user.email is not None

    def create() -> None:
        admin.create(auth_id, user.email or "", metadata)
        result.profile_ids[user.maidcentral_user_id] = auth_id

    def keep_old_profile() -> None:
        if profile_id is not None:
            result.kept.add(user.maidcentral_user_id)

    return _Action(user.email, create, ("created",), keep_old_profile)


def _update_action(
    admin: AuthAdmin,
    email: str,
    auth_id: uuid.UUID,
    attributes: AdminUserAttributes,
    counts: list[str],
) -> _Action:
    return _Action(email, lambda: admin.update(auth_id, attributes), tuple(counts))


def _run_bounded(
    actions: list[_Action],
    concurrency: int,
    result: AuthSyncResult,
    fail: Callable[[str | None, str], None],
) -> None:
    """Run the calls, ``concurrency`` at a time; stop trying when the server keeps failing."""
    if not actions:
        return
    lock = threading.Lock()
    streak = 0

    def run(action: _Action) -> None:
        nonlocal streak
        with lock:
            if result.aborted:
                fail(action.email, f"not attempted: {result.aborted}")
                action.on_failure()
                return
        try:
            action.run()
        except AuthAdminError as error:
            with lock:
                streak = streak + 1 if error.retryable else 0
                if streak >= FAILURE_STREAK_LIMIT and not result.aborted:
                    result.aborted = f"Auth admin API failing ({error})"
                fail(action.email, str(error))
                action.on_failure()
            return
        except Exception as error:  # a bug or a malformed answer: this user only
            log.exception("auth admin call for %s failed", action.email)
            with lock:
                fail(action.email, f"{type(error).__name__}: {error}")
                action.on_failure()
            return
        with lock:
            streak = 0
            for name in action.counts:
                setattr(result, name, getattr(result, name) + 1)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="auth-admin") as pool:
        list(pool.map(run, actions))


__all__ = [
    "BAN_DURATION",
    "PAGE_SIZE",
    "AuthAdmin",
    "AuthAdminError",
    "AuthSyncResult",
    "AuthUser",
    "WantedUser",
    "reconcile",
]
