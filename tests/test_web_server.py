"""``opsdash web`` as a browser meets it: a real server on loopback, httpx and websockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import migrated
from tests.waiting import wait_until
from tests.web_server import WebServer, running_web

ERROR = re.compile(r'<p class="error" role="alert">([^<]*)</p>')
PASSWORD = "correct horse battery staple"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return migrated(f"sqlite:///{tmp_path / 'opsdash.db'}")


@pytest.fixture
def web(database_url: str, tmp_path: Path) -> Iterator[WebServer]:
    with running_web(database_url, tmp_path) as server:
        server.add_operator("alice", PASSWORD)
        yield server


def sign_in(client: httpx.Client, name: str, password: str, **headers: str) -> httpx.Response:
    return client.post("/login", data={"username": name, "password": password}, headers=headers)


def error_of(response: httpx.Response) -> str | None:
    match = ERROR.search(response.text)
    return match[1] if match else None


def set_cookie_of(response: httpx.Response) -> list[str]:
    """The Set-Cookie header's attributes, lower-cased, name=value first."""
    return [part.strip().lower() for part in response.headers["set-cookie"].split(";")]


# --- signing in -----------------------------------------------------------------------------


def test_every_route_but_the_sign_in_page_needs_a_session(web: WebServer) -> None:
    with httpx.Client(base_url=web.url) as client:
        for path in ("/", "/static/js/textual.js", "/download/anything", "/ws"):
            response = client.get(path)
            if path == "/ws":
                assert response.status_code == 401
            else:
                assert response.status_code == 302, path
                assert response.headers["location"] == "/login"
        page = client.get("/login")
        assert page.status_code == 200
        assert 'action="/login"' in page.text
        assert 'name="username"' in page.text and 'name="password"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_signing_in_sets_a_strict_http_only_cookie_and_opens_the_console_page(
    web: WebServer,
) -> None:
    with httpx.Client(base_url=web.url) as client:
        response = sign_in(client, "alice", PASSWORD)
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        attributes = set_cookie_of(response)
        assert attributes[0].startswith("opsdash_session=")
        assert len(attributes[0].split("=", 1)[1]) >= 40
        assert {"httponly", "path=/", "samesite=strict"} <= set(attributes)
        assert "secure" not in attributes  # plain http on loopback: the browser would drop it

        page = client.get("/")
        assert page.status_code == 200
        assert 'id="terminal"' in page.text
        assert "alice" in page.text
        script = client.get("/static/js/textual.js")
        assert script.status_code == 200
        assert script.headers["cache-control"] == "private, max-age=3600"
        assert client.get("/login").status_code == 302  # signed in already


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(web: WebServer) -> None:
    web.add_operator("bob", PASSWORD)
    web.set_disabled("bob", True)
    with httpx.Client(base_url=web.url) as client:
        answers = [
            sign_in(client, "alice", "wrong password"),
            sign_in(client, "nobody", PASSWORD),
            sign_in(client, "bob", PASSWORD),  # disabled
            sign_in(client, "alice", ""),
        ]
    assert [r.status_code for r in answers] == [401, 401, 401, 401]
    assert {error_of(r) for r in answers} == {"Wrong name or password."}
    assert all("set-cookie" not in r.headers for r in answers)
    assert "failed sign-in for 'nobody' from 127.0.0.1" in web.log()


def test_five_failures_lock_the_address_out_with_retry_after(web: WebServer) -> None:
    with httpx.Client(base_url=web.url) as client:
        for attempt in range(5):
            assert sign_in(client, f"guess{attempt}", "x").status_code == 401
        locked = sign_in(client, "alice", PASSWORD)  # even the right password now
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 300
        assert error_of(locked) == "Too many failed sign-ins. Try again in 5 minutes."
        assert "set-cookie" not in locked.headers


def test_a_sign_in_post_from_another_site_is_refused(web: WebServer) -> None:
    with httpx.Client(base_url=web.url) as client:
        response = sign_in(client, "alice", PASSWORD, Origin="http://evil.example")
        assert response.status_code == 403
        assert "set-cookie" not in response.headers
        same_site = sign_in(client, "alice", PASSWORD, Origin=web.url)
        assert same_site.status_code == 303


def test_signing_out_ends_the_session(web: WebServer) -> None:
    with httpx.Client(base_url=web.url) as client:
        sign_in(client, "alice", PASSWORD)
        token = client.cookies["opsdash_session"]
        response = client.get("/logout")
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
        assert "opsdash_session=" in response.headers["set-cookie"]
    with httpx.Client(base_url=web.url, cookies={"opsdash_session": token}) as replay:
        assert replay.get("/").status_code == 302


# --- behind a proxy -------------------------------------------------------------------------


def test_forwarded_headers_are_ignored_unless_the_peer_is_the_trusted_proxy(
    database_url: str, tmp_path: Path
) -> None:
    with running_web(database_url, tmp_path) as web:
        web.add_operator("alice", PASSWORD)
        with httpx.Client(base_url=web.url) as client:
            # Five failures claiming five addresses: all are the one loopback peer.
            for index in range(5):
                forwarded = {"X-Forwarded-For": f"198.51.100.{index + 1}"}
                assert sign_in(client, f"guess{index}", "x", **forwarded).status_code == 401
            blocked = sign_in(client, "alice", PASSWORD, **{"X-Forwarded-For": "198.51.100.99"})
            assert blocked.status_code == 429
        web_log = web.log()
        assert "from 127.0.0.1" in web_log and "198.51.100" not in web_log


def test_the_trusted_proxy_names_the_client_and_the_scheme(
    database_url: str, tmp_path: Path
) -> None:
    settings = {"OPSDASH_WEB_TRUSTED_PROXY": "127.0.0.1"}
    with running_web(database_url, tmp_path, environment=settings) as web:
        web.add_operator("alice", PASSWORD)
        web.add_operator("bob", PASSWORD)
        with httpx.Client(base_url=web.url) as client:
            # One name tried from five addresses: the name is locked, whatever the address.
            for index in range(5):
                forwarded = {"X-Forwarded-For": f"198.51.100.{index + 1}"}
                assert sign_in(client, "alice", "x", **forwarded).status_code == 401
            assert (
                sign_in(
                    client, "alice", PASSWORD, **{"X-Forwarded-For": "198.51.100.6"}
                ).status_code
                == 429
            )
            # Another client behind the same proxy is not locked out by those failures.
            other = sign_in(
                client,
                "bob",
                PASSWORD,
                **{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
            )
            assert other.status_code == 303
            assert "secure" in set_cookie_of(other)
        assert "failed sign-in for 'alice' from 198.51.100.3" in web.log()
        assert "bob signed in from 203.0.113.7" in web.log()


def test_a_claimed_https_from_an_untrusted_peer_gets_no_secure_cookie(web: WebServer) -> None:
    with httpx.Client(base_url=web.url) as client:
        response = sign_in(client, "alice", PASSWORD, **{"X-Forwarded-Proto": "https"})
        assert response.status_code == 303
        assert "secure" not in set_cookie_of(response)


# --- over TLS -------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_over_tls_the_cookie_is_secure(database_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = {"OPSDASH_WEB_TLS_CERT": str(cert), "OPSDASH_WEB_TLS_KEY": str(key)}
    with running_web(database_url, tmp_path, environment=settings) as web:
        assert web.url.startswith("https://127.0.0.1:")
        web.add_operator("alice", PASSWORD)
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=web.url, verify=trust) as client:
            response = sign_in(client, "alice", PASSWORD)
            assert response.status_code == 303
            assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(
                set_cookie_of(response)
            )
            assert client.get("/").status_code == 200


# --- the consoles ---------------------------------------------------------------------------


def cookie_for(web: WebServer, name: str = "alice") -> str:
    with httpx.Client(base_url=web.url) as client:
        assert sign_in(client, name, PASSWORD).status_code == 303
        return client.cookies["opsdash_session"]


def ws_url(web: WebServer) -> str:
    return web.url.replace("http", "ws", 1) + "/ws?width=120&height=40"


async def open_console(
    session: aiohttp.ClientSession, web: WebServer, token: str | None, **headers: str
) -> aiohttp.ClientWebSocketResponse:
    cookies = {"Cookie": f"opsdash_session={token}"} if token else {}
    return await session.ws_connect(ws_url(web), headers={**cookies, **headers})


async def first_screen(websocket: aiohttp.ClientWebSocketResponse) -> int:
    """Read terminal output until the console has drawn a screen; the bytes read."""
    received = 0
    while received < 2000:
        message = await websocket.receive(timeout=90)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        received += len(message.data)
    return received


async def environments_of_one_console(web: WebServer, token: str) -> list[dict[str, str]]:
    """Open one console, let it draw, and read the environment of every console process."""
    async with aiohttp.ClientSession() as session:
        websocket = await open_console(session, web, token, Origin=web.url)
        await first_screen(websocket)
        seen = web.consoles()
        await websocket.close()
        return seen


def test_a_websocket_without_a_session_or_from_another_site_is_refused(web: WebServer) -> None:
    token = cookie_for(web)

    async def attempt(token: str | None, **headers: str) -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await open_console(session, web, token, **headers)
            return refused.value.status

    assert asyncio.run(attempt(None)) == 401
    assert asyncio.run(attempt("forged-token")) == 401
    assert asyncio.run(attempt(token, Origin="http://evil.example")) == 403
    assert web.consoles() == []


def test_each_console_runs_as_its_signed_in_operator(database_url: str, tmp_path: Path) -> None:
    # The server's own environment names somebody else: the console must not inherit it.
    settings = {"OPSDASH_OPERATOR": "mallory", "OPSDASH_CONSOLE": "terminal"}
    with running_web(database_url, tmp_path, environment=settings) as web:
        web.add_operator("alice", PASSWORD)
        consoles = asyncio.run(environments_of_one_console(web, cookie_for(web)))
        assert len(consoles) == 1
        assert consoles[0]["OPSDASH_OPERATOR"] == "alice"
        assert consoles[0]["OPSDASH_CONSOLE"] == "web"
        # The demo upstream is served once, by the web process; a console only points at it.
        [hosted] = re.findall(r"demo upstream serving on (\S+)", web.log())
        assert consoles[0]["MAIDCENTRAL_API_URL"] == hosted
        assert consoles[0]["OPSDASH_DEMO"] == "1"
        # Its screens read through the server's one refresh.
        assert Path(consoles[0]["OPSDASH_SHARED_READS_SOCKET"]).is_socket()
        wait_until(lambda: web.consoles() == [], what="the console process to exit")


def test_consoles_inherit_the_demo_and_config_chosen_on_the_command_line(
    database_url: str, tmp_path: Path
) -> None:
    # Only the command line asks for the demo: each console, a fresh `python -m opsdash`,
    # reads its environment alone and would refuse the test database without being told.
    config = tmp_path / "web.toml"
    config.write_text("workers = 1\n")
    with running_web(
        database_url,
        tmp_path,
        environment={"OPSDASH_DEMO": ""},
        args=["--demo", "--config", str(config)],
    ) as web:
        web.add_operator("alice", PASSWORD)
        consoles = asyncio.run(environments_of_one_console(web, cookie_for(web)))
        assert len(consoles) == 1
        assert consoles[0]["OPSDASH_DEMO"] == "1"
        assert consoles[0]["OPSDASH_CONFIG"] == str(config)
        wait_until(lambda: web.consoles() == [], what="the console process to exit")


def test_the_number_of_running_consoles_is_capped(database_url: str, tmp_path: Path) -> None:
    with running_web(database_url, tmp_path, environment={"OPSDASH_WEB_MAX_SESSIONS": "1"}) as web:
        web.add_operator("alice", PASSWORD)
        token = cookie_for(web)
        client = httpx.Client(base_url=web.url, cookies={"opsdash_session": token})

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                first = await open_console(session, web, token)
                await first_screen(first)

                busy = client.get("/")
                assert busy.status_code == 503
                assert "All browser consoles are in use" in busy.text
                assert "at most 1 browser consoles" in busy.text
                assert busy.headers["retry-after"] == "30"
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await open_console(session, web, token)
                assert refused.value.status == 503

                await first.close()

        asyncio.run(run())
        wait_until(lambda: client.get("/").status_code == 200, what="the slot to free up")
        client.close()


def test_signing_out_closes_the_operators_consoles(web: WebServer) -> None:
    token = cookie_for(web)

    async def run() -> aiohttp.WSMessage:
        async with aiohttp.ClientSession() as session:
            websocket = await open_console(session, web, token)
            await first_screen(websocket)
            with httpx.Client(base_url=web.url, cookies={"opsdash_session": token}) as client:
                assert client.get("/logout").status_code == 303
            while True:
                message = await websocket.receive(timeout=60)
                if message.type != aiohttp.WSMsgType.BINARY:
                    return message

    closing = asyncio.run(run())
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    wait_until(lambda: web.consoles() == [], what="the console process to exit")


def test_a_disabled_operator_cannot_open_a_console_with_an_old_session(web: WebServer) -> None:
    token = cookie_for(web)
    web.set_disabled("alice", True)

    async def attempt() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await open_console(session, web, token)
            return refused.value.status

    assert asyncio.run(attempt()) == 401
    with httpx.Client(base_url=web.url, cookies={"opsdash_session": token}) as client:
        assert client.get("/").status_code == 302  # the session ended with the refusal


def test_a_console_that_cannot_start_closes_the_page_instead_of_hanging(
    database_url: str, tmp_path: Path
) -> None:
    # Signing in needs only the database; a console also needs its blob store, and this
    # one is a storage server that is not there, so every console exits at once. (With
    # its engine, `opsdash web` itself would refuse to start on that store, as --serve
    # does: here the engine runs elsewhere.)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    broken = {
        "SUPABASE_URL": f"http://127.0.0.1:{nobody}",
        "SUPABASE_SERVICE_ROLE_KEY": "not-a-key",
    }
    with running_web(database_url, tmp_path, environment=broken, args=["--no-engine"]) as web:
        web.add_operator("alice", PASSWORD)
        token = cookie_for(web)

        async def run() -> aiohttp.WSMessage:
            async with aiohttp.ClientSession() as session:
                websocket = await open_console(session, web, token)
                while True:
                    message = await websocket.receive(timeout=90)
                    if message.type != aiohttp.WSMsgType.BINARY:
                        return message

        closing = asyncio.run(run())
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        with httpx.Client(base_url=web.url, cookies={"opsdash_session": token}) as client:
            wait_until(lambda: client.get("/").status_code == 200, what="the slot to be free")
        assert "console of alice ended" in web.log()
        # (textual-serve relays a console's error output to the server's standard output)
        wait_until(lambda: any("blob store" in line for line in web.lines), seen=web.lines.copy)
