"""A demo world with one crowded day: thousands of jobs, all on one technician's schedule.

The console must stay usable when a company-day is far larger than usual (a 2,500-job
day is megabytes of JSON). The crowded day is made of the world's ordinary jobs, taken
from the days after it and renumbered, so every field is as realistic as elsewhere.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from opsdash.demo.data import DemoWorld

CROWDED_JOB_ID_BASE = 900_000_000


class CrowdedDayWorld(DemoWorld):
    """``DemoWorld`` whose first company has ``jobs`` jobs on ``day``.

    Every job of that day also lists one technician, the first by name: the one the
    console's preview shows first, who therefore gets all of them.
    """

    def __init__(self, day: date, jobs: int = 2500, companies: int = 1, seed: int = 0) -> None:
        super().__init__(companies=companies, seed=seed)
        self.crowded_day = day
        self.crowded_jobs = jobs
        self.crowded_company = self.service_company_ids[0]
        technicians = [tech for team in self.companies[0].teams for tech in team.technicians]
        self.technician = min(technicians, key=lambda tech: (tech.full_name, tech.email.lower()))

    def jobs_for_day(
        self, service_company_id: str | int, day: date, revision: int = 0
    ) -> list[dict[str, Any]]:
        if str(service_company_id) != self.crowded_company or day != self.crowded_day:
            return super().jobs_for_day(service_company_id, day, revision)
        jobs: list[dict[str, Any]] = []
        later = day
        while len(jobs) < self.crowded_jobs:
            later += timedelta(days=1)
            jobs += super().jobs_for_day(service_company_id, later, revision)
        del jobs[self.crowded_jobs :]
        for number, job in enumerate(jobs):
            job["JobInformationId"] = CROWDED_JOB_ID_BASE + number
            job["JobDate"] = f"{day.isoformat()}T00:00:00"
            self._add_technician(job)
        return jobs

    def _add_technician(self, job: dict[str, Any]) -> None:
        tech = self.technician
        schedules = job["EmployeeSchedules"]
        if any(
            entry["EmployeeInformationId"] == tech.employee_information_id for entry in schedules
        ):
            return
        schedules.append(
            {
                "EmployeeInformationId": tech.employee_information_id,
                "FirstName": tech.first_name,
                "LastName": tech.last_name,
                "TeamListId": tech.team_list_id,
                "TeamPosition": tech.team_position,
            }
        )
