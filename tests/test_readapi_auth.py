"""Token verification (HS256, ES256/RS256 through a JWKS with key rotation) and token minting."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from opsdash.config import Settings
from opsdash.engine.db import Database
from opsdash.engine.models import Company, UserProfile
from opsdash.readapi.auth import TokenRejected, TokenVerifier
from opsdash.readapi.errors import ServiceUnavailable
from opsdash.readapi.tokens import InvalidLifetime, TokenError, UnknownUser, mint_token

SECRET = "a-local-secret-that-is-long-enough-for-hs256"
USER = uuid.uuid4()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": str(USER), "exp": int(time.time()) + 600, **extra}


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class JwksServer:
    """A JWKS endpoint on a loopback port whose key set a test can rotate."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/auth/v1/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def publish(self, kid: str, public_key: Any) -> None:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            jwk = json.loads(ECAlgorithm.to_jwk(public_key))
            jwk["alg"] = "ES256"
        else:
            jwk = json.loads(RSAAlgorithm.to_jwk(public_key))
            jwk["alg"] = "RS256"
        self.keys.append({**jwk, "kid": kid, "use": "sig"})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_hs256_with_the_configured_secret() -> None:
    verifier = TokenVerifier(hs256_secret=SECRET)
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).subject == USER
    with pytest.raises(TokenRejected, match="signature"):
        verifier.verify(jwt.encode(claims(), SECRET + "x", algorithm="HS256"))


def test_asymmetric_tokens_are_refused_without_a_jwks(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = TokenVerifier(hs256_secret=SECRET)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(TokenRejected, match="algorithm 'ES256' is not accepted"):
        verifier.verify(token)


def test_es256_and_rs256_through_the_jwks(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.publish("ec-1", ec_key.public_key())
    jwks.publish("rsa-1", rsa_key.public_key())
    verifier = TokenVerifier(hs256_secret=SECRET, jwks_url=jwks.url)
    es256 = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    rs256 = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(es256).subject == USER
    assert verifier.verify(rs256).subject == USER
    # The project secret still verifies HS256 tokens beside the JWKS.
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).subject == USER
    assert jwks.fetches == 1, "the key set is fetched once and cached"


def test_an_unknown_kid_refetches_the_jwks_once(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.publish("old", ec.generate_private_key(ec.SECP256R1()).public_key())
    verifier = TokenVerifier(hs256_secret=None, jwks_url=jwks.url, jwks_refresh_cooldown_s=0)
    old_key_token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "old"})
    with pytest.raises(TokenRejected, match="signature"):
        verifier.verify(old_key_token)
    assert jwks.fetches == 1
    jwks.publish("rotated", ec_key.public_key())  # the project rotated its signing key
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rotated"})
    assert verifier.verify(token).subject == USER
    assert jwks.fetches == 2
    with pytest.raises(TokenRejected, match="signing key is unknown"):
        verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "nope"}))


def test_key_confusion_is_refused(jwks: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    # An attacker signs HS256 with the *public* key as the HMAC secret.
    jwks.publish("rsa-1", rsa_key.public_key())
    verifier = TokenVerifier(hs256_secret=SECRET, jwks_url=jwks.url)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Signed by hand: PyJWT itself refuses to use a public key as an HMAC secret.
    signing_input = f"{b64url({'alg': 'HS256', 'kid': 'rsa-1'})}.{b64url(claims())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(TokenRejected):
        verifier.verify(forged)


def test_an_unreachable_jwks_is_503(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = TokenVerifier(hs256_secret=None, jwks_url="http://127.0.0.1:1/jwks.json")
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k"})
    with pytest.raises(ServiceUnavailable):
        verifier.verify(token)


def test_verify_async_fetches_keys_off_the_event_loop(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.publish("ec-1", ec_key.public_key())
    verifier = TokenVerifier(hs256_secret=SECRET, jwks_url=jwks.url)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert asyncio.run(verifier.verify_async(token)).subject == USER


def test_audience_and_issuer_when_configured() -> None:
    issuer = "https://project.supabase.co/auth/v1"
    verifier = TokenVerifier(hs256_secret=SECRET, audience="authenticated", issuer=issuer)

    def sign(**extra: Any) -> str:
        return jwt.encode(claims(**extra), SECRET, algorithm="HS256")

    assert verifier.verify(sign(aud="authenticated", iss=issuer)).subject == USER
    with pytest.raises(TokenRejected, match="audience"):
        verifier.verify(sign(aud="anon", iss=issuer))
    with pytest.raises(TokenRejected, match="issuer"):
        verifier.verify(sign(aud="authenticated", iss="https://elsewhere"))
    with pytest.raises(TokenRejected, match="'aud'"):
        verifier.verify(sign(iss=issuer))
    # Without a configured audience, a token's aud is not held against it.
    assert TokenVerifier(hs256_secret=SECRET).verify(sign(aud="authenticated")).subject == USER


def test_a_remembered_token_still_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(hs256_secret=SECRET, leeway_s=0, clock=lambda: now[0])
    token = jwt.encode(claims(exp=int(now[0]) + 5), SECRET, algorithm="HS256")
    assert verifier.verify(token).subject == USER
    assert verifier.verify(token).subject == USER  # remembered
    now[0] += 6
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "x" * 9000,
    ],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(TokenRejected):
        TokenVerifier(hs256_secret=SECRET).verify(token)


# --- minting (SQLite and Postgres) ------------------------------------------------------


def add_user(db: Database, email: str, role: str = "technician") -> UserProfile:
    company = Company(service_company_id=f"c{uuid.uuid4().hex[:8]}", name="Company")
    profile = UserProfile(
        id=uuid.uuid4(), company_id=company.id, role=role, email=email, employee_information_id="7"
    )
    with db.write_session() as session:
        session.add(company)
        session.flush()
        session.add(profile)
        session.commit()
    return profile


def test_a_minted_token_verifies_as_that_user(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jwt_audience="authenticated", jwt_issuer="opsdash")
    profile = add_user(db, "tech@example.com")
    token = mint_token(settings, db, "Tech@Example.com ", timedelta(hours=1))
    verified = TokenVerifier.from_settings(settings).verify(token)
    assert verified.subject == profile.id
    assert verified.claims["aud"] == "authenticated" and verified.claims["iss"] == "opsdash"
    assert 3590 <= verified.expires_at - time.time() <= 3600


def test_minting_for_an_unknown_or_shared_email_is_a_clear_error(
    db: Database, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(UnknownUser, match=r"no synced user has the email 'ghost@example\.com'"):
        mint_token(settings, db, "ghost@example.com", timedelta(hours=1))
    add_user(db, "shared@example.com")
    add_user(db, "shared@example.com", role="office")
    with pytest.raises(UnknownUser, match="2 synced profiles share"):
        mint_token(settings, db, "shared@example.com", timedelta(hours=1))
    add_user(db, "ok@example.com")
    with pytest.raises(InvalidLifetime):
        mint_token(settings, db, "ok@example.com", timedelta(0))


def test_a_jwks_only_deployment_trusts_no_local_secret(db: Database, tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path)
    add_user(db, "tech@example.com")
    local_token = mint_token(embedded, db, "tech@example.com", timedelta(hours=1))
    jwks_only = Settings(data_dir=tmp_path, jwks_url="http://127.0.0.1:1/jwks.json")
    verifier = TokenVerifier.from_settings(jwks_only)
    assert "HS256" not in verifier.algorithms
    with pytest.raises(TokenRejected):
        verifier.verify(local_token)
    with pytest.raises(TokenError, match="identity provider"):
        mint_token(jwks_only, db, "tech@example.com", timedelta(hours=1))
