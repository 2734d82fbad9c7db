"""Command-line wiring for the demo upstream (`opsdash demo-upstream`, `python -m opsdash.demo`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from opsdash.demo.server import DemoUpstream, FaultSettings

DEFAULT_PORT = 8765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server and fault-injection options to ``parser``."""
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (0 picks a free one)"
    )
    server.add_argument("--companies", type=int, default=6, help="number of demo companies")
    server.add_argument("--seed", type=int, default=0, help="seed for data and fault draws")
    server.add_argument("--api-key", default="demo-key", help="the Bearer key clients must send")
    server.add_argument(
        "--revision", type=int, default=0, help="data revision; changing it changes some jobs"
    )
    server.add_argument("--log-requests", action="store_true", help="log each request to stderr")

    faults = parser.add_argument_group("faults (rates are per request, 0 to 1)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    faults.add_argument("--error-rate", type=float, default=0.0, help="HTTP 500 answers")
    faults.add_argument("--rate-limit-rate", type=float, default=0.0, help="HTTP 429 answers")
    faults.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of a 429")
    faults.add_argument("--timeout-rate", type=float, default=0.0, help="requests that hang")
    faults.add_argument("--hang-s", type=float, default=30.0, help="how long a hang lasts")
    faults.add_argument("--malformed-rate", type=float, default=0.0, help="truncated JSON bodies")
    faults.add_argument(
        "--failure-rate", type=float, default=0.0, help="HTTP 200 with IsSuccess false"
    )


def faults_from_args(args: argparse.Namespace) -> FaultSettings:
    return FaultSettings(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        timeout_rate=args.timeout_rate,
        hang_s=args.hang_s,
        malformed_rate=args.malformed_rate,
        failure_rate=args.failure_rate,
        revision=args.revision,
    )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``stop.set()`` for the duration, then restore the handlers."""

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # signal.signal only works on the main thread; elsewhere the caller stops us.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set). The URL goes alone to stdout, so a
    parent process can read it; the human hint goes to stderr."""
    try:
        faults = faults_from_args(args)
        upstream = DemoUpstream(
            companies=args.companies,
            seed=args.seed,
            api_key=args.api_key,
            faults=faults,
            log_requests=args.log_requests,
        )
    except ValueError as exc:
        print(f"opsdash demo-upstream: {exc}", file=sys.stderr)
        return 2
    stop = stop if stop is not None else threading.Event()
    with _stop_on_signals(stop):
        try:
            url = upstream.start(args.host, args.port)
        except OSError as exc:
            print(
                f"opsdash demo-upstream: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        try:
            print(url, flush=True)
            print(
                f"demo upstream: {len(upstream.world.companies)} companies, "
                f"API key {args.api_key!r}. Ctrl+C to stop.",
                file=sys.stderr,
                flush=True,
            )
            # Waiting in slices keeps the main thread responsive to signals everywhere.
            while not stop.wait(0.5):
                pass
        finally:
            upstream.stop()
    return 0
