"""``opsdash doctor`` as an operator runs it, against real parts on loopback.

The Supabase project is one URL: Storage is the stand-in in
``tests/supabase_storage_server.py``; Auth (the admin users list and the JWKS) is
a small server here that answers as the ``supabase/auth`` OpenAPI document says;
a front server routes ``/storage/v1`` and ``/auth/v1`` to them as the project's
gateway does. The database is the real Postgres, the upstream the demo upstream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from opsdash.demo.server import DemoUpstream
from opsdash.engine.db import connect
from opsdash.engine.schema import revisions, upgrade
from tests.conftest import PostgresSchemas, migrated
from tests.supabase_storage_server import SupabaseStorageStandIn

pytestmark = pytest.mark.postgres

JWT_SECRET = "doctor-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"
OURS = ("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_")


@dataclass
class AuthState:
    """What the Auth server knows: its users and its signing keys."""

    users: list[dict[str, object]] = field(default_factory=list)
    jwks: dict[str, object] = field(default_factory=lambda: {"keys": []})
    requests: list[str] = field(default_factory=list)


class Project:
    """One Supabase project URL on loopback: Auth answered here, Storage forwarded."""

    def __init__(self, storage: SupabaseStorageStandIn) -> None:
        self.auth = AuthState()
        self._storage_url = storage.url
        self._forward = httpx.Client(timeout=10)
        project = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                project.answer(self)

            def do_POST(self) -> None:
                project.answer(self)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = urlsplit(request.path).path
        if path.startswith("/storage/v1/"):
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            reply = self._forward.request(
                request.command, self._storage_url + request.path, headers=headers, content=body
            )
            self._send(request, reply.status_code, reply.content, reply.headers.get("content-type"))
            return
        self.auth.requests.append(request.path)
        status, payload, extra = self._auth(request, path)
        self._send(request, status, json.dumps(payload).encode(), "application/json", extra)

    def _auth(
        self, request: BaseHTTPRequestHandler, path: str
    ) -> tuple[int, object, dict[str, str]]:
        if path == "/auth/v1/.well-known/jwks.json":
            return 200, self.auth.jwks, {}
        if path != "/auth/v1/admin/users" or request.command != "GET":
            return 404, {"code": 404, "error_code": "not_found", "msg": "Not found"}, {}
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            message = "invalid JWT: unable to parse or verify signature, signature is invalid"
            return 401, {"code": 401, "error_code": "bad_jwt", "msg": message}, {}
        if claims.get("role") != "service_role":
            return 403, {"code": 403, "error_code": "not_admin", "msg": "User not allowed"}, {}
        query = parse_qs(urlsplit(request.path).query)
        page, per_page = int(query["page"][0]), int(query["per_page"][0])
        users = self.auth.users[(page - 1) * per_page : page * per_page]
        total = {"x-total-count": str(len(self.auth.users))}
        return 200, {"users": users, "aud": "authenticated"}, total

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type or "application/json")
        for name, value in (extra or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._forward.close()


@pytest.fixture
def storage() -> Iterator[SupabaseStorageStandIn]:
    with SupabaseStorageStandIn(JWT_SECRET) as standin:
        yield standin


@pytest.fixture
def project(storage: SupabaseStorageStandIn) -> Iterator[Project]:
    front = Project(storage)
    yield front
    front.close()


def signing_keys() -> dict[str, object]:
    public = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    return {"keys": [{**json.loads(public), "kid": "key-1", "alg": "ES256", "use": "sig"}]}


def production_env(
    tmp_path: Path, db_url: str, project: Project, service_key: str, upstream: DemoUpstream
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return {
        **env,
        "COLUMNS": "240",  # one row per check, whatever the terminal
        "OPSDASH_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": db_url,
        "SUPABASE_URL": project.url,
        "SUPABASE_SERVICE_ROLE_KEY": service_key,
        "MAIDCENTRAL_API_URL": upstream.url,
        "MAIDCENTRAL_API_KEY": "test-key",
    }


def doctor(env: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Exit status and each check's table row, by check name."""
    result = subprocess.run(
        [sys.executable, "-m", "opsdash", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        for name in CHECKS:
            if line.strip()[1:].strip().startswith(name + "  "):
                rows[name] = line
    assert set(rows) == set(CHECKS), result.stdout
    return result.returncode, rows


CHECKS = (
    "database",
    "database schema",
    "blob storage",
    "Auth admin API",
    "upstream",
    "token verification",
    "clock",
)


def test_a_healthy_production_setup_passes_every_check(
    tmp_path: Path,
    pg_url: str,
    storage: SupabaseStorageStandIn,
    project: Project,
    demo_upstream: DemoUpstream,
) -> None:
    migrated(pg_url)
    storage.create_bucket(BUCKET, public=False)
    project.auth.users = [{"id": "7d8e6b52-5f0e-4c1e-9a43-1d2b8a3f4c55", "aud": "authenticated"}]
    project.auth.jwks = signing_keys()
    env = production_env(tmp_path, pg_url, project, storage.service_role_key, demo_upstream)

    status, rows = doctor(env)

    assert status == 0, "\n".join(rows.values())
    for name, row in rows.items():
        assert row.startswith(" ✓ "), f"{name}: {row}"
    assert "bucket 'schedule-data' exists and is private" in rows["blob storage"]
    assert "1 user in Auth" in rows["Auth admin API"]
    assert "1 signing key (key-1 ES256)" in rows["token verification"]
    assert demo_upstream.stats()["requests"] == 1, "the upstream check is one call"
    assert "/auth/v1/admin/users?page=1&per_page=1" in project.auth.requests
    assert not (tmp_path / "data" / "jwt-secret").exists(), "doctor creates nothing"


def test_each_failure_is_named_with_its_fix(
    tmp_path: Path,
    pg_schemas: PostgresSchemas,
    storage: SupabaseStorageStandIn,
    project: Project,
    demo_upstream: DemoUpstream,
) -> None:
    pg_url = pg_schemas.new_url()  # reachable, never migrated
    storage.create_bucket(BUCKET, public=False)
    wrong_key = storage.mint_key("service_role", secret="another-project-secret-of-32-bytes!!")
    env = production_env(tmp_path, pg_url, project, wrong_key, demo_upstream)
    env["MAIDCENTRAL_API_KEY"] = "not-the-key"  # and the JWKS lists no keys, no secret set

    status, rows = doctor(env)

    assert status == 1
    assert rows["database"].startswith(" ✓ ")
    assert rows["database schema"].startswith(" ✗ ")
    assert "no opsdash schema" in rows["database schema"]
    assert "run `opsdash migrate`" in rows["database schema"]
    assert rows["blob storage"].startswith(" ✗ ") and "service role key" in rows["blob storage"]
    assert rows["Auth admin API"].startswith(" ✗ ")
    assert (
        "401: invalid JWT" in rows["Auth admin API"]
        and "not the anon key" in rows["Auth admin API"]
    )
    assert rows["upstream"].startswith(" ✗ ") and "MAIDCENTRAL_API_KEY" in rows["upstream"]
    assert rows["token verification"].startswith(" ✗ ")
    assert "set SUPABASE_JWT_SECRET" in rows["token verification"]
    assert rows["clock"].startswith(" ✓ ")

    anon = storage.mint_key("anon")
    status, rows = doctor({**env, "SUPABASE_SERVICE_ROLE_KEY": anon})
    assert "403: User not allowed" in rows["Auth admin API"]


def test_a_public_bucket_and_a_secret_only_project(
    tmp_path: Path,
    pg_url: str,
    storage: SupabaseStorageStandIn,
    project: Project,
    demo_upstream: DemoUpstream,
) -> None:
    migrated(pg_url)
    storage.create_bucket(BUCKET, public=True)
    env = production_env(tmp_path, pg_url, project, storage.service_role_key, demo_upstream)
    env["SUPABASE_JWT_SECRET"] = JWT_SECRET  # a legacy project: HS256 only, an empty JWKS

    status, rows = doctor(env)

    assert status == 1
    assert rows["blob storage"].startswith(" ✗ ")
    assert "is public" in rows["blob storage"] and "make it private" in rows["blob storage"]
    assert rows["token verification"].startswith(" ✓ ")
    assert "HS256 with SUPABASE_JWT_SECRET" in rows["token verification"]


def test_an_unreachable_database_fails_its_checks(
    tmp_path: Path, storage: SupabaseStorageStandIn, project: Project, demo_upstream: DemoUpstream
) -> None:
    storage.create_bucket(BUCKET, public=False)
    project.auth.jwks = signing_keys()
    env = production_env(
        tmp_path,
        "postgresql://nobody@127.0.0.1:1/none",
        project,
        storage.service_role_key,
        demo_upstream,
    )
    status, rows = doctor(env)
    assert status == 1
    assert rows["database"].startswith(" ✗ ") and "unreachable" in rows["database"]
    assert "check DATABASE_URL" in rows["database"]
    assert rows["database schema"].startswith(" ✗ ") and rows["clock"].startswith(" ✗ ")
    assert rows["blob storage"].startswith(" ✓ ") and rows["Auth admin API"].startswith(" ✓ ")


def test_an_older_schema_says_to_run_migrate(
    tmp_path: Path,
    pg_schemas: PostgresSchemas,
    storage: SupabaseStorageStandIn,
    project: Project,
    demo_upstream: DemoUpstream,
) -> None:
    pg_url = pg_schemas.new_url()
    older, head = revisions()[-2], revisions()[-1]
    db = connect(pg_url)
    upgrade(db, older)
    db.dispose()
    storage.create_bucket(BUCKET, public=False)
    project.auth.jwks = signing_keys()
    env = production_env(tmp_path, pg_url, project, storage.service_role_key, demo_upstream)

    status, rows = doctor(env)

    assert status == 1
    assert rows["database schema"].startswith(" ✗ ")
    assert f"at revision {older}, older than {head}" in rows["database schema"]
    assert "run `opsdash migrate`" in rows["database schema"]

    migration = subprocess.run(
        [sys.executable, "-m", "opsdash", "migrate"], env=env, capture_output=True, text=True
    )
    assert migration.returncode == 0, migration.stderr
    status, rows = doctor(env)
    assert status == 0, "\n".join(rows.values())
    assert f"at revision {head} (current)" in rows["database schema"]
