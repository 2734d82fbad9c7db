"""``opsdash token --email E``: an HS256 token for a synced user, signed with the configured secret.

For the embedded mode (and for trying a Supabase setup that has its JWT secret):
in production the portal's users get their tokens from Supabase Auth. Lifetimes
are 1 hour by default and 24 hours at most.

The token has the claims the read API checks (``sub`` = the profile id, ``exp``,
and ``aud`` / ``iss`` when configured) plus Supabase's usual ``role`` and
``email``, so the same token works wherever a Supabase access token would.
"""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
from sqlalchemy import func, select

from opsdash.config import Settings
from opsdash.engine.db import Database
from opsdash.engine.models import UserProfile

DEFAULT_TTL = timedelta(hours=1)
# A minted token cannot be revoked before it expires (only the profile behind it can be
# removed), so it lives a working day at most.
MAX_TTL = timedelta(hours=24)


class TokenError(Exception):
    """A token cannot be minted; the message says why and what to do."""


class UnknownUser(TokenError, LookupError):
    """No single synced profile has that email."""


class InvalidLifetime(TokenError, ValueError):
    pass


def mint_token(settings: Settings, db: Database, email: str, ttl: timedelta) -> str:
    """A signed token for the synced user with ``email``, valid for ``ttl``."""
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        hours = int(MAX_TTL.total_seconds() // 3600)
        raise InvalidLifetime(f"token lifetime must be between 1 second and {hours} hours")
    profile = _profile_by_email(db, email)
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(profile.id),
        "email": profile.email,
        "role": "authenticated",
        "iat": now,
        "exp": now + int(ttl.total_seconds()),
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    secret = settings.jwt_secret()
    if secret is None:
        raise TokenError(
            "tokens come from the identity provider here (signing keys from "
            f"{settings.effective_jwks_url}, no SUPABASE_JWT_SECRET): sign in through it instead"
        )
    return jwt.encode(claims, secret, algorithm="HS256")


def _profile_by_email(db: Database, email: str) -> UserProfile:
    wanted = email.strip().lower()
    with db.session() as session:
        profiles = (
            session.execute(select(UserProfile).where(func.lower(UserProfile.email) == wanted))
            .scalars()
            .all()
        )
    if not profiles:
        raise UnknownUser(
            f"no synced user has the email {email!r}; run `opsdash sync --wait` first, "
            "or check the address"
        )
    if len(profiles) > 1:
        raise UnknownUser(
            f"{len(profiles)} synced profiles share the email {email!r}; "
            "mint a token for one of them with a JWT tool"
        )
    return profiles[0]
