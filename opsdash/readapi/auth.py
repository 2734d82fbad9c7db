"""Token verification, in one place.

Accepted tokens:
- HS256, signed with ``settings.jwt_secret()`` (the Supabase project's JWT secret,
  or the local secret that ``opsdash token`` signs with in the embedded default; no
  HS256 at all when only a JWKS is configured);
- ES256 / RS256, when ``settings.effective_jwks_url`` is set (``OPSDASH_JWKS_URL``, or
  the Supabase project's ``/auth/v1/.well-known/jwks.json``), with the key named by the
  token's ``kid`` from that JWKS. The set is cached for five minutes; an unknown
  ``kid`` refetches it (key rotation), at most once every few seconds so that
  tokens with made-up kids cannot turn into a flood of fetches. Fetches happen
  off the event loop.

Every token must carry ``exp`` and a ``sub`` that is a user id; ``aud`` and
``iss`` are checked when configured. ``alg: none`` and any other algorithm are
refused before a key is even looked at, and so is a token whose algorithm is not
its key's (an RS256 token naming an EC key's ``kid``, or the reverse). Whatever
goes wrong while verifying, the answer is :class:`TokenRejected` (401), never a
500: a token is attacker-controlled input. A verified token is remembered (by its
exact text) until it expires, so a client's repeated requests cost one lookup.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError
from starlette.concurrency import run_in_threadpool

from opsdash.config import Settings
from opsdash.readapi.cache import MISSING, LruCache
from opsdash.readapi.errors import ServiceUnavailable, Unauthorized
from opsdash.readapi.logbudget import LogBudget

log = logging.getLogger("opsdash.readapi.auth")
# Unexpected verification failures are worth a line, but a flood of them is not worth more.
_log_budget = LogBudget(lines=5, window_s=60.0)

HMAC_ALGORITHMS = frozenset({"HS256"})
JWKS_ALGORITHMS = frozenset({"ES256", "RS256"})
MAX_TOKEN_LENGTH = 8192
DEFAULT_LEEWAY_S = 10.0
JWKS_CACHE_S = 300
JWKS_REFRESH_COOLDOWN_S = 5.0


class TokenRejected(Unauthorized):
    """The token is missing, malformed, expired, forged or not meant for us."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: uuid.UUID
    expires_at: float
    claims: Mapping[str, Any]


class TokenVerifier:
    def __init__(
        self,
        *,
        hs256_secret: str | None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = DEFAULT_LEEWAY_S,
        jwks_refresh_cooldown_s: float = JWKS_REFRESH_COOLDOWN_S,
        cache_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not hs256_secret and not jwks_url:
            raise ValueError("token verification needs an HS256 secret or a JWKS URL")
        self._secret = hs256_secret
        self._jwks = (
            PyJWKClient(
                jwks_url,
                cache_keys=True,
                lifespan=JWKS_CACHE_S,
                timeout=5,
                cooldown_duration=jwks_refresh_cooldown_s,
            )
            if jwks_url
            else None
        )
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s
        self._clock = clock
        self._verified: LruCache[str, VerifiedToken] = LruCache(max_entries=cache_entries)
        self.algorithms = (HMAC_ALGORITHMS if hs256_secret else frozenset()) | (
            JWKS_ALGORITHMS if jwks_url else frozenset()
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, cache_entries: int = 10_000) -> TokenVerifier:
        return cls(
            hs256_secret=settings.jwt_secret(),
            jwks_url=settings.effective_jwks_url,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            cache_entries=cache_entries,
        )

    def remembered(self, token: str) -> VerifiedToken | None:
        """The token if it was verified before and has not expired since; never raises."""
        verified = self._verified.get(token)
        if verified is MISSING or verified.expires_at + self._leeway_s <= self._clock():
            return None
        return verified

    async def verify_async(self, token: str) -> VerifiedToken:
        """As :meth:`verify`; a JWKS fetch (the only blocking step) runs in a thread."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        if self._algorithm(token) in JWKS_ALGORITHMS:
            return await run_in_threadpool(self.verify, token)
        return self.verify(token)

    def verify(self, token: str) -> VerifiedToken:
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        algorithm = self._algorithm(token)
        key = self._key_for(token, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(f"token has no {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature is invalid") from None
        except jwt.PyJWTError:
            raise TokenRejected("token is invalid") from None
        except Exception as error:
            # A library failing on a crafted token (a key of the wrong type, odd claims)
            # is still a token we cannot verify.
            _log_budget.log(
                log, logging.WARNING, "unverifiable", "token refused: %s", type(error).__name__
            )
            raise TokenRejected("token cannot be verified") from None
        verified = VerifiedToken(_subject(claims), float(claims["exp"]), claims)
        self._verified.put(token, verified)
        return verified

    def _remembered(self, token: str) -> VerifiedToken | None:
        verified = self._verified.get(token)
        if verified is MISSING:
            return None
        if verified.expires_at + self._leeway_s <= self._clock():
            self._verified.drop(token)
            raise TokenRejected("token expired")
        return verified

    def _algorithm(self, token: str) -> str:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # PyJWTError, or anything else a crafted header provokes
            raise TokenRejected("token is malformed") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise TokenRejected(f"token algorithm {algorithm!r} is not accepted")
        return algorithm

    def _key_for(self, token: str, algorithm: str) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            return self._secret
        assert self._jwks is not None  # the algorithm is only accepted with a JWKS URL
        try:
            # Looks the kid up in the cached set and refetches once when it is unknown.
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except PyJWKClientConnectionError:
            raise ServiceUnavailable("token signing keys are unreachable") from None
        except (PyJWKClientError, jwt.PyJWTError):
            raise TokenRejected("token signing key is unknown") from None
        except Exception:
            raise TokenRejected("token signing key is unusable") from None
        # The key's own algorithm (its "alg", or what its type and curve imply) must be
        # the token's: verifying RS256 with an EC key is a TypeError deep in the library.
        if getattr(signing_key, "algorithm_name", None) != algorithm:
            raise TokenRejected("token algorithm does not match its signing key")
        return signing_key.key


def _subject(claims: Mapping[str, Any]) -> uuid.UUID:
    try:
        return uuid.UUID(str(claims["sub"]))
    except (KeyError, ValueError):
        raise TokenRejected("token subject is not a user id") from None
