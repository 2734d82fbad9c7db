"""The read API's guards, measured: `python bench/bench_abuse.py` (loopback only, bounded).

Starts `serve()` with its default limits on a free loopback port and an empty data
folder, then prints, for each attack of the hardening issue, what the server
answered, how long it took and what it cost the server process:

- a header streamed towards 256 MB: time to the 431 and bytes the client got out;
- N idle sockets (default 5,000) against the 1,000-connection cap: the server's
  open descriptors and /healthz latency while they are held;
- M tokens that cannot be verified: answers and log bytes written.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(port: int, raw: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def healthz_ms(port: int) -> float:
    started = time.perf_counter()
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    return (time.perf_counter() - started) * 1000


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def huge_header(port: int, pid: int) -> None:
    rss_before = rss_mb(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.perf_counter()
        sent, answer = 0, b""
        sock.settimeout(0.05)
        while sent < 256 * 1024 * 1024 and not answer:
            try:
                sent += sock.send(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                break
            except TimeoutError:
                pass
            with suppress(TimeoutError):
                answer = sock.recv(65536)
        took = time.perf_counter() - started
    status = answer.split(b"\r\n", 1)[0].decode() if answer else "(connection closed)"
    print(
        f"256 MB header: {status} after {took * 1000:.0f} ms, client got {sent / 1024:.0f} KB "
        f"out; server RSS {rss_before:.0f} -> {rss_mb(pid):.0f} MB"
    )


def idle_flood(port: int, pid: int, sockets: int) -> None:
    before = fds(pid)
    with ExitStack() as stack:
        started = time.perf_counter()
        for _ in range(sockets):
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        opened = time.perf_counter() - started
        time.sleep(0.5)
        latencies = sorted(healthz_ms(port) for _ in range(20))
        print(
            f"{sockets} idle sockets (opened in {opened:.1f} s): server fds {before} -> "
            f"{fds(pid)}; /healthz median {latencies[10]:.1f} ms, max {latencies[-1]:.1f} ms"
        )


def bad_tokens(port: int, log: Path, count: int) -> None:
    log_before = log.stat().st_size
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    for index in range(count):
        token = f"eyJhbGciOiJSUzI1NiIsImtpZCI6ImVjLTEifQ.eyJzdWIiOiJ4In0.sig{index}"
        answer = request(
            port,
            b"GET /functions/v1/get-schedule?date=2026-12-01 HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n",
        )
        status = answer.split(b" ", 2)[1].decode()
        statuses[status] = statuses.get(status, 0) + 1
    took = time.perf_counter() - started
    grown = log.stat().st_size - log_before
    print(
        f"{count} bad tokens in {took:.1f} s: answers {statuses}; log grew {grown} bytes "
        f"({grown / count:.1f} per request)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="opsdash-abuse-"))
    port = free_port()
    log = data / "serve.log"
    script = (
        "import sys\nfrom pathlib import Path\nfrom opsdash.config import Settings\n"
        "from opsdash.readapi.server import serve\n"
        f"sys.exit(serve(Settings(data_dir=Path({str(data)!r})), port={port}, with_engine=False))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "SUPABASE"))}
    with log.open("wb") as stderr:
        server = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stderr=stderr)
    try:
        for _ in range(900):
            try:
                healthz_ms(port)
                break
            except OSError:
                time.sleep(0.1)
        huge_header(port, server.pid)
        idle_flood(port, server.pid, args.sockets)
        bad_tokens(port, log, args.tokens)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
