"""The read API under abuse: real ``serve()`` processes on loopback, raw sockets, bounded floods.

Each attack of the hardening issue is repeated here against a served process
with small limits (a 40-connection cap, a 3 s receive deadline, a 0.5 s
keep-alive), and the answer, the time it takes and what it costs the server
(open descriptors, resident memory, log bytes) are checked. Every loop is
bounded in count and in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.demo import engine_for
from opsdash.engine.models import ScheduleData, UserProfile
from opsdash.readapi.app import SCHEDULE_PATH
from opsdash.readapi.guards import OpsAccess, resolve_ops_access
from tests.test_readapi_auth import JwksServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_CONNECTIONS = 40
# Long enough that a loaded machine sets up the busy connections below within it.
REQUEST_TIMEOUT_S = 3.0
KEEP_ALIVE_S = 0.5
OPS_TOKEN = "ops-token-" + "x" * 40


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    token: str  # an office user's ES256 token, verified through the JWKS
    day: date
    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    subject: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log_bytes(self) -> int:
        return self.stderr_path.stat().st_size

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signed(self, key: Any, algorithm: str, kid: str, subject: str | None = None) -> str:
        claims = {"sub": subject or self.subject, "exp": int(time.time()) + 600}
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


@contextmanager
def serving(settings_kwargs: dict[str, Any], stderr_path: Path) -> Iterator[tuple[Any, int]]:
    port = free_port()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from opsdash.config import Settings\n"
        "from opsdash.readapi.server import serve\n"
        f"settings = Settings(**{settings_kwargs!r})\n"
        f"sys.exit(serve(settings, host='127.0.0.1', port={port}, with_engine=False))\n"
    )
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "SUPABASE"))},
        )
    try:
        deadline = time.monotonic() + 90
        while True:  # the readiness poll
            assert process.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "the server never became ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("abuse")
    base = {"data_dir": str(data_dir), "demo_companies": 1, "days_ahead": 1, "workers": 1}
    engine = engine_for(Settings(**base, poll_interval_s=0.05))
    engine.sync()
    engine.start(scheduler=False)
    assert engine.wait_idle(timeout_s=60, poll_s=0.05)
    with engine.db.session() as session:
        subject = session.execute(
            select(UserProfile.id).where(UserProfile.role == "office").limit(1)
        ).scalar_one()
        day = session.execute(select(ScheduleData.date)).scalars().first()
    engine.stop()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = JwksServer()
    jwks.publish("ec-1", ec_key.public_key())
    jwks.publish("rsa-1", rsa_key.public_key())
    jwks.thread.start()
    settings_kwargs = {
        **base,
        "jwks_url": jwks.url,
        "http_max_connections": MAX_CONNECTIONS,
        "http_request_timeout_s": REQUEST_TIMEOUT_S,
        "http_keep_alive_s": KEEP_ALIVE_S,
    }
    try:
        with serving(settings_kwargs, data_dir / "serve.log") as (process, port):
            token = jwt.encode(
                {"sub": str(subject), "exp": int(time.time()) + 3600},
                ec_key,
                algorithm="ES256",
                headers={"kid": "ec-1"},
            )
            yield Served(
                process, port, data_dir / "serve.log", token, day, ec_key, rsa_key, str(subject)
            )
    finally:
        jwks.httpd.shutdown()
        jwks.httpd.server_close()


# --- raw HTTP helpers --------------------------------------------------------------------


def connect(served: Served, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or a whole answer with its body is in."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= lengths[0]:
                return data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def closed_by_server(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the server closed the connection, or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def healthz_latency(served: Served) -> float:
    """Seconds for a new connection to get /healthz's 200 (raw socket: no client overhead)."""
    started = time.monotonic()
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(read_answer(sock)) == 200
    return time.monotonic() - started


def schedule(served: Served, **headers: str) -> httpx.Response:
    return httpx.get(
        f"{served.url}{SCHEDULE_PATH}",
        params={"date": str(served.day)},
        headers={"Authorization": f"Bearer {served.token}", **headers},
        timeout=5,
    )


# --- header size -------------------------------------------------------------------------


def test_a_huge_header_is_refused_with_431_at_once(served: Served) -> None:
    rss_before = served.rss_mb()
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.monotonic()
        sent = 0
        answer = b""
        sock.settimeout(0.2)
        # Keep sending, as the 256 MB client did, until the server answers or 8 MB went out.
        while sent < 8 * 1024 * 1024:
            try:
                sent += sock.send(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                break
            except TimeoutError:
                pass
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                pass
        sock.settimeout(5)
        answer += read_answer(sock)
        took = time.monotonic() - started
    assert status_of(answer) == 431
    assert b"request headers too large" in answer
    assert took < 2.0, f"431 took {took:.2f}s"
    assert sent < 8 * 1024 * 1024, "the server kept reading a head far past its bound"
    assert served.rss_mb() - rss_before < 20, "the parser buffered the header"


def test_many_headers_past_16_kb_are_431_and_just_under_is_served(served: Served) -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(170))  # ~18 KB
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert status_of(read_answer(sock)) == 431
    some = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(140))  # ~15 KB
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + some + b"\r\n")
        assert status_of(read_answer(sock)) == 200


def test_healthz_answers_while_a_huge_header_streams_in(served: Served) -> None:
    stop = threading.Event()

    def stream() -> None:
        for _ in range(200):  # bounded: at most 200 connections of up to 1 MB each
            if stop.is_set():
                return
            with connect(served) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                try:
                    for _ in range(16):
                        sock.sendall(b"b" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        latencies = [healthz_latency(served) for _ in range(20)]
    finally:
        stop.set()
        streamer.join(timeout=30)
    assert max(latencies) < 0.5, latencies


# --- slow, silent and idle connections ------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_receive_deadline(served: Served) -> None:
    with connect(served) as sock:
        took = closed_by_server(sock, within_s=REQUEST_TIMEOUT_S + 3)
    assert took is not None, "a connection that never spoke was kept open"
    assert REQUEST_TIMEOUT_S - 0.3 < took < REQUEST_TIMEOUT_S + 1.5


def test_a_slowly_sent_head_gets_408(served: Served) -> None:
    with connect(served) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for _ in range(int(REQUEST_TIMEOUT_S * 10) + 20):  # a header byte every 100 ms
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.1)
            try:
                answer = sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                continue
        sock.settimeout(5)
        answer += read_answer(sock)
        took = time.monotonic() - started
    assert status_of(answer) == 408
    assert took < REQUEST_TIMEOUT_S + 1.5


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_answer(sock)) == 200
        took = closed_by_server(sock, within_s=KEEP_ALIVE_S + 3)
    assert took is not None and took < KEEP_ALIVE_S + 1.0


def test_a_body_trickled_forever_does_not_hold_the_connection(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert status_of(read_answer(sock)) == 200
        started = time.monotonic()
        closed = False
        for _ in range(int(REQUEST_TIMEOUT_S * 10) + 30):  # a byte every 100 ms, bounded
            try:
                sock.sendall(b"z")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
    assert closed, "the trickled body kept the connection open"
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2


# --- floods -----------------------------------------------------------------------------


def test_a_flood_of_idle_sockets_never_locks_real_clients_out(served: Served) -> None:
    assert schedule(served).status_code == 200  # the database files are open from here on
    fds_before = served.open_fds()
    with ExitStack() as stack:
        flood = [stack.enter_context(connect(served)) for _ in range(10 * MAX_CONNECTIONS)]
        # While 400 idle sockets are held, the server keeps at most its cap open...
        deadline = time.monotonic() + 5
        while served.open_fds() - fds_before > MAX_CONNECTIONS + 5:
            assert time.monotonic() < deadline, served.open_fds()
            time.sleep(0.05)
        # ...and real clients are served, health checks and schedules alike.
        assert healthz_latency(served) < 2.0
        assert schedule(served).status_code == 200
        assert len(flood) == 10 * MAX_CONNECTIONS
    # The evicted sockets were closed by the server, not left half-open.
    deadline = time.monotonic() + 5
    while served.open_fds() > fds_before + 2:
        assert time.monotonic() < deadline, (served.open_fds(), fds_before)
        time.sleep(0.05)


def test_when_every_connection_is_busy_new_ones_get_503_but_healthz_answers(
    served: Served,
) -> None:
    with ExitStack() as stack:
        busy = []
        started = time.monotonic()
        for _ in range(MAX_CONNECTIONS + 5):
            sock = stack.enter_context(connect(served))
            # A request whose body is still arriving: busy until the receive deadline.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            busy.append(sock)
        for sock in busy:
            assert status_of(read_answer(sock)) == 200  # answered without its body
            sock.sendall(b"z")  # more body: the request is not over, so the socket is kept
        answer = schedule(served)
        took = time.monotonic() - started
        assert took < REQUEST_TIMEOUT_S, f"setting up took {took:.1f}s: the first ones timed out"
        assert answer.status_code == 503
        assert answer.json() == {"error": "server busy: too many connections, retry shortly"}
        assert answer.headers["retry-after"] == "1"
        assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
    # Once the busy connections are gone the server serves as before.
    deadline = time.monotonic() + 5
    while schedule(served).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- tokens -----------------------------------------------------------------------------


def test_mixed_key_tokens_are_401_and_a_flood_costs_a_bounded_log(served: Served) -> None:
    rs256_naming_ec_key = served.signed(served.rsa_key, "RS256", "ec-1")
    es256_naming_rsa_key = served.signed(served.ec_key, "ES256", "rsa-1")
    for token in (rs256_naming_ec_key, es256_naming_rsa_key):
        answer = httpx.get(
            f"{served.url}{SCHEDULE_PATH}",
            params={"date": str(served.day)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 401, answer.text
    log_before = served.log_bytes()
    requests = 600
    with httpx.Client(base_url=served.url) as client:
        for index in range(requests):
            token = (rs256_naming_ec_key, es256_naming_rsa_key)[index % 2]
            answer = client.get(
                SCHEDULE_PATH,
                params={"date": str(served.day)},
                headers={"Authorization": f"Bearer {token}x{index}"},
            )
            assert answer.status_code == 401
    grown = served.log_bytes() - log_before
    assert grown < 20_000, f"{requests} bad tokens grew the log by {grown} bytes"
    assert "Traceback" not in served.log_text()
    assert "left out before this one" in served.log_text() or grown < 10_000


def test_two_authorization_headers_are_a_400(served: Served) -> None:
    other = served.signed(served.ec_key, "ES256", "ec-1", subject=str(uuid.uuid4()))
    assert schedule(served).status_code == 200  # warm: the fast path knows the first token
    for first, second in ((served.token, other), (other, served.token)):
        with connect(served) as sock:
            sock.sendall(
                f"GET {SCHEDULE_PATH}?date={served.day} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\n\r\n".encode()
            )
            answer = read_answer(sock)
        assert status_of(answer) == 400
        assert b"more than one Authorization header" in answer


# --- HEAD, redirects ------------------------------------------------------------------------


def test_head_answers_as_get_without_a_body(served: Served) -> None:
    get = schedule(served)
    assert get.status_code == 200
    for path in (f"{SCHEDULE_PATH}?date={served.day}", "/healthz"):
        with connect(served) as sock:
            sock.sendall(
                f"HEAD {path} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {served.token}\r\n\r\n".encode()
            )
            sock.settimeout(KEEP_ALIVE_S + 3)
            raw = b""
            while chunk := sock.recv(65536):  # the server closes the idle connection
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert status_of(raw) == 200, raw[:300]
        assert body == b"", "HEAD carried a body"
        if path.startswith(SCHEDULE_PATH):
            headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
            assert headers["etag"] == get.headers["etag"]
            assert int(headers["content-length"]) == len(get.content)


def test_no_redirect_is_built_from_the_host_header(served: Served) -> None:
    for path in ("/healthz/", f"{SCHEDULE_PATH}/?date={served.day}", "/docs/"):
        answer = httpx.get(
            f"{served.url}{path}", headers={"Host": "evil.example"}, follow_redirects=False
        )
        assert not answer.is_redirect, (path, answer.headers)
        assert "evil.example" not in answer.headers.get("location", "")
        assert answer.status_code == 404


# --- the operator endpoints ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "host", "expected"),
    [
        ("auto", "127.0.0.1", OpsAccess.OPEN),
        ("auto", "::1", OpsAccess.OPEN),
        ("auto", "0.0.0.0", OpsAccess.TOKEN),
        ("open", "0.0.0.0", OpsAccess.OPEN),
        ("off", "127.0.0.1", OpsAccess.OFF),
    ],
)
def test_ops_access_resolves_per_address(setting: str, host: str, expected: OpsAccess) -> None:
    assert resolve_ops_access(setting, OPS_TOKEN, host) is expected
    if setting == "auto" and host == "0.0.0.0":
        assert resolve_ops_access(setting, None, host) is OpsAccess.OFF


def test_operator_endpoints_behind_a_token_or_off(tmp_path: Path) -> None:
    base = {"data_dir": str(tmp_path), "demo_companies": 1}
    with serving(
        {**base, "ops_endpoints": "token", "ops_token": OPS_TOKEN}, tmp_path / "a.log"
    ) as (
        _,
        port,
    ):
        url = f"http://127.0.0.1:{port}"
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(url + path).status_code == 401
            wrong = {"Authorization": f"Bearer {OPS_TOKEN}x"}
            assert httpx.get(url + path, headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {OPS_TOKEN}"}
            assert httpx.get(url + path, headers=right).status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200
    with serving({**base, "ops_endpoints": "off"}, tmp_path / "b.log") as (_, port):
        url = f"http://127.0.0.1:{port}"
        for path in ("/metrics", "/docs", "/openapi.json"):
            right = {"Authorization": f"Bearer {OPS_TOKEN}"}
            assert httpx.get(url + path, headers=right).status_code == 404
        assert httpx.get(url + "/healthz").status_code == 200
