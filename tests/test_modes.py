"""Explicit modes: the embedded demo with nothing set, production only with the whole set.

Commands run as real processes with a clean environment; token verification runs
against a real JWKS served on loopback; the console is driven with Pilot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from opsdash.app import OpsdashApp
from opsdash.config import ConfigurationError, Mode, Settings, load_settings
from opsdash.demo import DemoUpstream, engine_for
from opsdash.engine.runtime import Engine
from opsdash.readapi.auth import TokenVerifier
from tests.conftest import PG_ADMIN_DSN, PostgresSchemas, engine_settings
from tests.test_console_actions import text_of, wait_for
from tests.test_readapi_server import free_port
from tests.waiting import answers_ok, wait_until

PRODUCTION = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "SUPABASE_URL": "http://127.0.0.1:9",
    "SUPABASE_SERVICE_ROLE_KEY": "service-key",
    "MAIDCENTRAL_API_URL": "http://127.0.0.1:9",
    "MAIDCENTRAL_API_KEY": "upstream-key",
}
OURS = ("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_")


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return {**env, "OPSDASH_DATA_DIR": str(data_dir), **extra}


def opsdash(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsdash", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def tables_in(schema_url: str) -> list[str]:
    schema = schema_url.split("search_path%3D")[1]
    with psycopg.connect(PG_ADMIN_DSN) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return [row[0] for row in rows]


# --- nothing set: the embedded demo, as before ------------------------------------------------


def test_nothing_set_is_the_embedded_demo(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "data", OPSDASH_DEMO_COMPANIES="1", OPSDASH_DAYS_AHEAD="1")
    result = opsdash("sync", "--wait", env=env)
    assert result.returncode == 0, result.stderr
    assert "mode DEMO; configuration: no config file" in result.stderr
    assert "Running upgrade  -> 0001" in result.stderr  # the first start migrates, and says so
    assert "Context impl" not in result.stderr and "Will assume" not in result.stderr
    assert "done: 2 completed" in result.stdout
    assert (tmp_path / "data" / "opsdash.db").is_file()
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.mode is Mode.DEMO and settings.starts_demo_upstream
    assert settings.effective_blob_backend == "local"
    assert settings.jwt_secret()  # the embedded default's own secret, kept in the data folder
    assert (tmp_path / "data" / "jwt-secret").is_file()


def test_the_demo_upstream_is_served_by_whoever_builds_the_engine(tmp_path: Path) -> None:
    """The engine never imports the demo: an entry point hands it the demo upstream."""
    settings = Settings(data_dir=tmp_path / "data", demo_companies=1)
    with pytest.raises(ConfigurationError, match="engine_for"):
        Engine(settings)
    engine = engine_for(settings)
    try:
        demo = engine.local_upstream
        assert isinstance(demo, DemoUpstream) and demo.running
        assert engine.upstream.base_url == demo.url
        assert engine.upstream_description == f"demo upstream {demo.url}"
    finally:
        engine.stop()
    assert not demo.running


# --- any production signal needs the whole set -------------------------------------------------


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["DATABASE_URL"], ["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "MAIDCENTRAL_API_URL"]),
        (["SUPABASE_URL"], ["DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "MAIDCENTRAL_API_KEY"]),
        (["SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "DATABASE_URL"], ["MAIDCENTRAL_API_URL"]),
        (["MAIDCENTRAL_API_KEY"], ["DATABASE_URL", "MAIDCENTRAL_API_URL"]),
        (
            ["DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "MAIDCENTRAL_API_KEY"],
            ["MAIDCENTRAL_API_URL"],
        ),
    ],
)
def test_a_partial_production_set_is_refused_naming_what_is_missing(
    tmp_path: Path, given: list[str], missing: list[str]
) -> None:
    env = clean_env(tmp_path / "data", **{name: PRODUCTION[name] for name in given})
    result = opsdash("sync", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "production (Supabase) mode" in result.stderr
    for name in missing:
        assert f"  {name} " in result.stderr, f"{name} not named:\n{result.stderr}"
    for name in given:
        assert f"  {name} " not in result.stderr, f"{name} is set, yet named missing"
    assert not (tmp_path / "data").exists(), "nothing may be written before the refusal"


@pytest.mark.parametrize(
    "command",
    [["sync"], ["worker"], ["token", "--email", "a@b.c"], ["--serve", "--no-engine"], []],
    ids=["sync", "worker", "token", "serve", "console"],
)
def test_every_command_refuses_a_partial_set(tmp_path: Path, command: list[str]) -> None:
    env = clean_env(tmp_path / "data", SUPABASE_URL="https://x.supabase.co")
    result = opsdash(*command, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "SUPABASE_SERVICE_ROLE_KEY" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.postgres
def test_a_typo_in_the_upstream_name_never_starts_the_demo_against_postgres(
    tmp_path: Path, pg_schemas: PostgresSchemas
) -> None:
    pg_url = pg_schemas.new_url()  # empty: not even the schema may be created
    production = {**PRODUCTION, "DATABASE_URL": pg_url.replace("+psycopg", "")}
    del production["MAIDCENTRAL_API_URL"]
    env = clean_env(tmp_path / "data", **production, MAIDCENTRAL_APIURL="http://127.0.0.1:9")
    result = opsdash("sync", "--wait", env=env)
    assert result.returncode == 2
    assert "  MAIDCENTRAL_API_URL " in result.stderr
    assert tables_in(pg_url) == [], "the real database must be left alone"
    assert "MAIDCENTRAL_APIURL (did you mean MAIDCENTRAL_API_URL?)" in result.stderr


def test_a_misspelt_name_alone_is_refused_by_name_not_ignored(tmp_path: Path) -> None:
    # Nothing else set: without the check this would start the embedded demo, silently.
    env = clean_env(tmp_path / "data", SUPABASE_SERVICE_KEY="service-key")
    result = opsdash("sync", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "SUPABASE_SERVICE_KEY (did you mean SUPABASE_SERVICE_ROLE_KEY?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing may be written before the refusal"


def test_names_other_tools_set_and_unrelated_names_are_left_alone() -> None:
    from opsdash.modes import misspelt_names

    environment = {
        "SUPABASE_DB_URL": "postgresql://…",  # Supabase's own, not a typo of SUPABASE_URL
        "SUPABASE_ANON_KEY": "anon",
        "OPSDASH_REQUIRE_POSTGRES": "1",  # the test suite's own switch
        "DATABASE_URL": "sqlite://",
        "OPSDASH_DEMO": "1",
        "HOME": "/root",
    }
    assert misspelt_names(Settings, environment) == []
    assert misspelt_names(Settings, {"OPSDASH_WORKER": "4"}) == [
        "OPSDASH_WORKER (did you mean OPSDASH_WORKERS?)"
    ]


def test_sqlite_elsewhere_needs_the_demo_asked_for(tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(ConfigurationError, match=r"--demo \(or OPSDASH_DEMO=1\)"):
        load_settings(data_dir=tmp_path, database_url=other)
    asked = load_settings(data_dir=tmp_path, database_url=other, demo=True)
    assert asked.mode is Mode.DEMO and asked.starts_demo_upstream


def test_production_set_is_supabase_mode(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, **{k.lower(): v for k, v in PRODUCTION.items()})
    assert settings.mode is Mode.SUPABASE
    assert not settings.uses_demo_upstream
    assert settings.effective_blob_backend == "supabase"
    on_sqlite = {k.lower(): v for k, v in PRODUCTION.items()}
    on_sqlite["database_url"] = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(ConfigurationError, match="not sqlite"):
        load_settings(data_dir=tmp_path, **on_sqlite)


def test_demo_with_half_a_supabase_project_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SUPABASE_SERVICE_ROLE_KEY"):
        load_settings(data_dir=tmp_path, demo=True, supabase_url="https://x.supabase.co")


# --- the demo against a chosen database says DEMO -----------------------------------------------


@pytest.mark.postgres
def test_serve_in_demo_against_postgres_says_demo(tmp_path: Path, pg_url: str) -> None:
    env = clean_env(tmp_path / "data", DATABASE_URL=pg_url, OPSDASH_DEMO="1")
    refused = opsdash("--serve", env={**env, "OPSDASH_DEMO": ""})
    assert refused.returncode == 2 and "--demo" in refused.stderr
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "opsdash", "--serve", "--no-engine", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "read API on" in line:
                break
        startup = "".join(lines)
        assert "mode DEMO" in startup
        assert "DEMO (demo upstream, not real schedules): read API on http://" in startup
        wait_until_serving(f"http://127.0.0.1:{port}/healthz")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def wait_until_serving(url: str, timeout_s: float = 60) -> None:
    wait_until(lambda: answers_ok(url, timeout_s=1), what=f"{url} to answer", timeout_s=timeout_s)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.postgres
@pytest.mark.anyio
async def test_console_header_says_demo_against_postgres(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url, demo=True, demo_companies=1)
    engine = engine_for(settings)
    try:
        app = OpsdashApp(engine, poll_interval_s=0.3)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: app.system_status is not None)
            nav = text_of(app.screen.query_one("#status-nav"))
            assert nav.startswith("[reverse b] DEMO [/]"), nav
    finally:
        engine.stop()


# --- tokens in Supabase mode come from the project's JWKS ----------------------------------------


class Jwks:
    """The Auth server's JWKS endpoint, on loopback, with one ES256 key."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**public, "kid": "k1", "alg": "ES256", "use": "sig"}]})
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                found = self.path == "/auth/v1/.well-known/jwks.json"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode() if found else b"{}")

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, claims: dict[str, object]) -> str:
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "k1"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


def test_supabase_mode_without_a_secret_verifies_through_the_project_jwks(
    tmp_path: Path, jwks: Jwks
) -> None:
    settings = engine_settings(
        "postgresql://postgres@127.0.0.1:5432/test",
        tmp_path,
        "http://127.0.0.1:9",
        demo=False,
        supabase_url=jwks.url,
        supabase_service_role_key="service-key",
    )
    assert settings.mode is Mode.SUPABASE
    assert settings.jwt_secret() is None
    assert not (tmp_path / "jwt-secret").exists(), "no local secret outside the embedded demo"
    verifier = TokenVerifier.from_settings(settings)
    assert verifier.algorithms == {"ES256", "RS256"}
    sub = "7d8e6b52-5f0e-4c1e-9a43-1d2b8a3f4c55"
    claims = {"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": time.time() + 60}
    assert str(verifier.verify(jwks.sign(claims)).subject) == sub
    assert jwks.paths == ["/auth/v1/.well-known/jwks.json"]
    forged = jwt.encode(claims, "a-guessed-secret-that-is-32-bytes-long", algorithm="HS256")
    with pytest.raises(Exception, match="not accepted"):
        verifier.verify(forged)


# --- the configuration file ---------------------------------------------------------------------


def test_a_config_file_in_the_working_directory_is_never_read(tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    (cwd / "opsdash.toml").write_text('supabase_jwt_secret = "planted"\nworkers = "x"\n')
    env = clean_env(tmp_path / "data", OPSDASH_DEMO_COMPANIES="1", OPSDASH_DAYS_AHEAD="1")
    result = opsdash("sync", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "configuration: no config file (environment only)" in result.stderr


def test_the_data_folder_file_and_an_explicit_file_are_read_and_logged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "opsdash.toml").write_text("demo_companies = 1\ndays_ahead = 1\n")
    env = clean_env(data)
    result = opsdash("sync", env=env)
    assert result.returncode == 0, result.stderr
    assert f"configuration: read {data / 'opsdash.toml'}" in result.stderr
    assert "queued 1 of 1" in result.stdout

    explicit = tmp_path / "prod.toml"
    explicit.write_text('sync_cron = "every hour"\n')
    for how in (["--config", str(explicit)], []):
        extra = {} if how else {"OPSDASH_CONFIG": str(explicit)}
        refused = opsdash("sync", *how, env={**env, **extra})
        assert refused.returncode == 2
        assert "OPSDASH_SYNC_CRON: 'every hour' is not a cron expression" in refused.stderr
        assert "Traceback" not in refused.stderr

    missing = opsdash("--config", str(tmp_path / "nope.toml"), "sync", env=env)
    assert missing.returncode == 2 and "is not a file" in missing.stderr


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("OPSDASH_LEASE_S", "-5", "greater than 0"),
        ("OPSDASH_SYNC_CRON", "61 * * * *", "not a cron expression"),
        ("OPSDASH_WORKERS", "-1", "greater than or equal to 0"),
        ("SUPABASE_URL", "db.example.supabase.co", "not an http(s) URL"),
        ("OPSDASH_CORS_ORIGINS", "https://portal.example.com", "not a JSON list"),
    ],
)
def test_invalid_settings_are_refused_at_load_time_by_name(
    tmp_path: Path, name: str, value: str, complaint: str
) -> None:
    result = opsdash("worker", env=clean_env(tmp_path / "data", **{name: value}), timeout=60)
    assert result.returncode == 2
    assert f"{name}: " in result.stderr and complaint in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
