"""The demo upstream with bad data in it, run as its own process by the fault suite.

Each of the first companies gets one kind of bad day; the rest stay healthy:
``python -m tests.system.bad_upstream --port 8766 --companies 8 --api-key KEY``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import date
from typing import Any

from opsdash.demo.data import DemoWorld
from opsdash.demo.server import DemoUpstream

BAD_DAYS = {
    "1001": "a job without an id",
    "1002": "a 5 MB company-day",
    "1003": "control characters and unicode in names and memos",
    "1004": "null arrays",
    "1005": "wrong types",
    "1006": "duplicate job ids",
}
ODD_TEXT = "Zoë \u202eevil\u202c \x00\x07\x1b[31mred\x1b[0m 北京 🧹 <script>alert(1)</script>\r\n"


class BadWorld(DemoWorld):
    def jobs_for_day(
        self, service_company_id: str | int, day: date, revision: int = 0
    ) -> list[dict[str, Any]]:
        jobs = super().jobs_for_day(service_company_id, day, revision)
        kind = BAD_DAYS.get(str(service_company_id))
        if kind is None or not jobs:
            return jobs
        first = jobs[0]
        if kind == "a job without an id":
            del first["JobInformationId"]
        elif kind == "a 5 MB company-day":
            first["NotesAndMemos"]["EventInstructions"] = "clean the windows " * 300_000
        elif kind == "control characters and unicode in names and memos":
            for job in jobs:
                job["CustomerInformation"]["CustomerFirstName"] = ODD_TEXT
                job["NotesAndMemos"]["HomeSpecialInstructions"] = ODD_TEXT
                for person in job.get("EmployeeSchedules") or []:
                    person["LastName"] = ODD_TEXT
        elif kind == "null arrays":
            for key in ("Discounts", "ScheduledTeams", "EmployeeSchedules", "ContactInfos"):
                first[key] = None
        elif kind == "wrong types":
            first["BillRate"] = "a lot"
            first["ScheduledTeams"] = {"TeamListId": "not a list"}
            first["AllowedTime"] = [1, 2, 3]
        elif kind == "duplicate job ids":
            jobs.append(dict(first))
        return jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--companies", type=int, default=8)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    upstream = DemoUpstream(BadWorld(companies=args.companies), api_key=args.api_key)
    print(upstream.start("127.0.0.1", args.port), flush=True)
    while not stop.wait(0.5):
        pass
    upstream.stop()


if __name__ == "__main__":
    main()
