"""Users sync in Supabase mode: the first sync of N users (every Auth user created) and an
unchanged re-sync (only the listing), with the admin calls counted at the Auth stand-in.

    .venv/bin/python bench/bench_auth_users.py [--users 5000] [--latency-ms 0]
        [--concurrency 8] [--backend sqlite|postgres|both]

The upstream directory and the Auth admin stand-in (tests/supabase_auth_server.py) run on
loopback in this process; ``--latency-ms`` makes every admin call take that long, as a
Supabase project across the internet does. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends import postgres_url, sqlite_url

from opsdash.engine import handlers
from opsdash.engine.auth_users import AuthAdmin
from opsdash.engine.db import connect, create_schema
from opsdash.engine.models import BackgroundJob
from opsdash.engine.upstream import MaidCentralClient, RateLimiter
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.test_users_sync import DirectoryServer, company, user


def run(url: str, label: str, users: int, latency_ms: float, concurrency: int) -> None:
    db = connect(url)
    create_schema(db)
    directory = DirectoryServer()
    per_company = 1000
    directory.companies = [
        company(
            3000 + c,
            [
                user(f"b{c}-{n}", ["Employee"], f"E{c}-{n}")
                for n in range(min(per_company, users - c * per_company))
            ],
        )
        for c in range(-(-users // per_company))
    ]
    upstream = MaidCentralClient(directory.url, "key", limiter=RateLimiter(10_000))
    with SupabaseAuthStandIn("bench-secret-" * 4) as auth:
        auth.faults.latency_s = latency_ms / 1000
        admin = AuthAdmin(auth.url, auth.service_role_key, concurrency=concurrency)
        context = handlers.HandlerContext(db=db, blobs=None, upstream=upstream, auth=admin)  # type: ignore[arg-type]
        for name in ("first sync", "unchanged"):
            auth.reset_counts()
            started = time.perf_counter()
            outcome = handlers.sync_users(context, BackgroundJob(job_type="sync_users"))
            elapsed = time.perf_counter() - started
            counts = outcome.result.get("auth_users", {})
            writes = auth.count("POST") + auth.count("PUT")
            print(
                f"{label:8} {name:10} users={users} latency={latency_ms:g}ms "
                f"concurrency={concurrency}: {elapsed:6.1f} s, "
                f"{auth.count('GET')} listing calls, {writes} writes"
                f" ({writes / elapsed:.0f}/s), created={counts.get('created')} "
                f"failed={counts.get('failed')}, max in flight {auth.max_in_flight}"
            )
        admin.close()
    upstream.close()
    directory.close()
    db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with sqlite_url() as url:
            run(url, "sqlite", args.users, args.latency_ms, args.concurrency)
    if args.backend in ("postgres", "both"):
        with postgres_url() as url:
            run(url, "postgres", args.users, args.latency_ms, args.concurrency)


if __name__ == "__main__":
    main()
