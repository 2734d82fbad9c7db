"""Deterministic demo data shaped like MaidCentral's API.

Every value is derived from ``(seed, company, date, revision)`` through string-seeded
``random.Random`` instances (seeded via SHA-512, so stable across runs and Python hash
seeds). Nothing reads the wall clock: the same world answers the same bytes forever,
which is what lets tests compare checksums and benchmarks replay the same load.
"""

from __future__ import annotations

import functools
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson

WINDOWS_TIME_ZONES: tuple[str, ...] = (
    "Eastern Standard Time",
    "Pacific Standard Time",
    "Central Standard Time",
    "Mountain Standard Time",
    "New Zealand Standard Time",
    "GMT Standard Time",
    "AUS Eastern Standard Time",
    "UTC",
)

TOGGLE_NAMES: tuple[str, ...] = (
    "TechDashboard_DisplayBillRate",
    "TechDashboard_DisplayFeeSplitRate",
    "TechDashboard_DisplayAddOnRate",
    "TechDashboard_DisplayRoomRate",
    "TechDashboard_DisplayCustomerPhoneNumbers",
    "TechDashboard_DisplayCustomerEmails",
    "TechDashboard_HideDiscounts",
)

# Chance that a toggle is on: display toggles are mostly on, hiding discounts is rarer,
# so companies differ without most of them looking locked down.
_TOGGLE_ON_CHANCE: dict[str, float] = {
    "TechDashboard_DisplayBillRate": 0.5,
    "TechDashboard_DisplayFeeSplitRate": 0.6,
    "TechDashboard_DisplayAddOnRate": 0.7,
    "TechDashboard_DisplayRoomRate": 0.7,
    "TechDashboard_DisplayCustomerPhoneNumbers": 0.7,
    "TechDashboard_DisplayCustomerEmails": 0.5,
    "TechDashboard_HideDiscounts": 0.35,
}

# One name per time zone slot, so a company's name fits where its customers live.
_COMPANY_NAMES: tuple[str, ...] = (
    "Sparkle Home Cleaning",
    "Fresh Start Maids",
    "Tidy Nest Services",
    "Bright & Shine Co.",
    "Kiwi Clean Crew",
    "Mayfair Maids",
    "Harbour Maids",
    "Northern Lights Cleaning",
)

_GROUP_NAMES: tuple[str, ...] = ("Clean Collective", "Brightway Franchise Group")

_TEAM_COLOURS: tuple[tuple[str, str], ...] = (
    ("Blue", "#1E88E5"),
    ("Green", "#43A047"),
    ("Red", "#E53935"),
    ("Gold", "#FDD835"),
    ("Violet", "#8E24AA"),
    ("Orange", "#FB8C00"),
)

_FIRST_NAMES: tuple[str, ...] = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Oliver", "Sophia", "Elijah", "Isabella",
    "James", "Mia", "Lucas", "Amelia", "Mateo", "Harper", "Ethan", "Evelyn", "Aiden",
    "Camila", "Daniel", "Aria", "Samuel", "Luna", "Henry", "Maya", "Jack", "Chloe",
    "Leo", "Zoe", "Owen", "Nora", "Wyatt", "Grace", "Caleb", "Lily", "Isaac", "Ruby",
    "Mason", "Aroha", "Tama", "Siobhan", "Priya", "Rahul", "Mei", "Hiro", "Fatima",
)  # fmt: skip

_LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson",
    "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Nguyen", "Hill", "Ngata", "O'Brien",
    "Patel", "Kowalski", "Tanaka", "Fischer", "Murphy", "Campbell", "Okafor", "Silva",
)  # fmt: skip

_STREETS: tuple[str, ...] = (
    "Maple Avenue", "Oak Street", "Cedar Lane", "Pine Road", "Elm Drive", "Birch Court",
    "Willow Way", "Lakeview Terrace", "Hillcrest Road", "Sunset Boulevard", "Park Place",
    "River Road", "Highland Avenue", "Church Street", "Meadow Lane", "Chestnut Close",
    "Harbour View Road", "Station Road", "Victoria Street", "Kingfisher Crescent",
)  # fmt: skip

# (service description, bill rate range, allowed hours choices)
_SERVICES: tuple[tuple[str, tuple[int, int], tuple[float, ...]], ...] = (
    ("Standard Clean", (120, 180), (2.0, 2.5, 3.0)),
    ("Recurring Weekly Clean", (95, 140), (1.5, 2.0, 2.5)),
    ("Recurring Biweekly Clean", (110, 160), (2.0, 2.5, 3.0)),
    ("Deep Clean", (220, 380), (3.5, 4.0, 5.0)),
    ("Move Out Clean", (300, 450), (4.0, 5.0, 6.0)),
    ("Post-Construction Clean", (350, 520), (5.0, 6.0)),
)

_EVENT_INSTRUCTIONS: tuple[str, ...] = (
    "Focus on kitchen and bathrooms; client hosting guests this weekend.",
    "Client requests eco-friendly products only - use the green caddy.",
    "Change bed linens in the primary bedroom; fresh set is in the hall closet.",
    "Do not move papers or devices on the office desk.",
    "Add-on: clean inside the fridge and throw out expired items with client OK.",
    "Add-on: inside oven clean. Allow an extra 45 minutes.",
    "Interior windows on the ground floor only.",
    "Skip the basement this visit, client is storing boxes there.",
    "Wipe down baseboards in living and dining rooms.",
)

_SPECIAL_INSTRUCTIONS: tuple[str, ...] = (
    "Two friendly dogs - keep the back gate closed at all times.",
    "Indoor cat: must not get outside. Check before opening doors.",
    "Please use the side entrance; the front door sticks.",
    "Shoes off inside, shoe covers are by the door.",
    "Hardwood floors throughout: no wet mopping, use the dry microfiber.",
    "Client works from home in the study - knock before entering.",
    "Marble counters: pH-neutral cleaner only, never vinegar.",
    "Newborn in the house - no strong fragrances, quiet near the nursery.",
)

_ACCESS_TEMPLATES: tuple[str, ...] = (
    "Lockbox on the back door, code {code}.",
    "Garage keypad {code}#, then the mudroom door is unlocked.",
    "Key under the blue planter by the porch. Alarm code {code}.",
    "Client will be home - ring the bell.",
    "Door code {code}. Disarm alarm within 30 seconds with {alarm}.",
    "Concierge has a key; show ID at the front desk. Unit fob code {code}.",
)

_INTERNAL_MEMOS: tuple[str, ...] = (
    "Pays by card on file. Tip usually added after the visit.",
    "Complained about streaks on the mirrors last visit - double check.",
    "Gate code changes monthly; confirm the day before.",
    "VIP client: referred four neighbours.",
    "Prefers the same team each visit when possible.",
    "Account 30 days overdue - office is following up, do not discuss with client.",
    "Requested a quote for carpet cleaning; office to call back.",
)

_DISCOUNTS: tuple[tuple[str, float | None, float | None], ...] = (
    # (description, percent of bill rate, flat amount)
    ("Recurring client discount", 10.0, None),
    ("First clean promotion", None, 20.0),
    ("Senior discount", 5.0, None),
    ("Referral credit", None, 25.0),
    ("Service recovery credit", None, 15.0),
)


@dataclass(frozen=True)
class City:
    """A place customers live; '#' in the templates becomes a random digit."""

    name: str
    region: str
    postal_template: str
    phone_template: str


# Fictional-number ranges where a country has one (US 555-01xx, UK 07700 900xxx,
# AU 0491 570xxx), so demo phone numbers can never ring a real person.
_CITIES_BY_ZONE: dict[str, tuple[City, ...]] = {
    "Eastern Standard Time": (
        City("Atlanta", "GA", "303##", "(404) 555-01##"),
        City("Charlotte", "NC", "282##", "(704) 555-01##"),
        City("Richmond", "VA", "232##", "(804) 555-01##"),
        City("Columbus", "OH", "432##", "(614) 555-01##"),
    ),
    "Pacific Standard Time": (
        City("Portland", "OR", "972##", "(503) 555-01##"),
        City("Seattle", "WA", "981##", "(206) 555-01##"),
        City("Sacramento", "CA", "958##", "(916) 555-01##"),
        City("San Diego", "CA", "921##", "(619) 555-01##"),
    ),
    "Central Standard Time": (
        City("Austin", "TX", "787##", "(512) 555-01##"),
        City("Nashville", "TN", "372##", "(615) 555-01##"),
        City("Madison", "WI", "537##", "(608) 555-01##"),
        City("Omaha", "NE", "681##", "(402) 555-01##"),
    ),
    "Mountain Standard Time": (
        City("Denver", "CO", "802##", "(303) 555-01##"),
        City("Boise", "ID", "837##", "(208) 555-01##"),
        City("Albuquerque", "NM", "871##", "(505) 555-01##"),
        City("Salt Lake City", "UT", "841##", "(801) 555-01##"),
    ),
    "New Zealand Standard Time": (
        City("Auckland", "Auckland", "10##", "+64 21 555 0##"),
        City("Wellington", "Wellington", "60##", "+64 22 555 0##"),
        City("Christchurch", "Canterbury", "80##", "+64 27 555 0##"),
        City("Hamilton", "Waikato", "32##", "+64 21 555 1##"),
    ),
    "GMT Standard Time": (
        City("London", "England", "SW1# #AA", "07700 900###"),
        City("Manchester", "England", "M# #AB", "07700 900###"),
        City("Bristol", "England", "BS# #AD", "07700 900###"),
        City("Cardiff", "Wales", "CF1# #BA", "07700 900###"),
    ),
    "AUS Eastern Standard Time": (
        City("Sydney", "NSW", "20##", "0491 570 ###"),
        City("Melbourne", "VIC", "30##", "0491 570 ###"),
        City("Canberra", "ACT", "26##", "0491 570 ###"),
        City("Hobart", "TAS", "70##", "0491 570 ###"),
    ),
    "UTC": (
        City("Reykjavik", "Capital Region", "1##", "+354 555 0###"),
        City("Hafnarfjordur", "Capital Region", "22#", "+354 555 1###"),
        City("Kopavogur", "Capital Region", "20#", "+354 555 2###"),
        City("Akureyri", "Northeast", "60#", "+354 555 3###"),
    ),
}

CONTACT_HOME_PHONE = 1
CONTACT_CELL_PHONE = 2
CONTACT_EMAIL = 3

# Job ids: company slot, then the day, then the job's index within the day, so they are
# unique across companies and days without any shared counter.
_JOB_ID_COMPANY_STRIDE = 100_000_000
_JOB_ID_DAY_STRIDE = 100
_USER_NAMESPACE = uuid.UUID("6f0c8a0e-3f0e-4c55-9d3c-5a1b9e0d7a11")


@dataclass(frozen=True)
class Person:
    """An upstream user; technicians carry an employee id and a team."""

    user_id: str
    first_name: str
    last_name: str
    email: str
    role: str
    employee_information_id: str | None = None
    team_list_id: int | None = None
    team_position: int | None = None

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    def as_upstream(self) -> dict[str, Any]:
        return {
            "UserId": self.user_id,
            "Email": self.email,
            "EmployeeInformationId": self.employee_information_id,
            "FirstName": self.first_name,
            "LastName": self.last_name,
            "FullName": self.full_name,
            "Roles": [self.role],
        }


@dataclass(frozen=True)
class Team:
    team_list_id: int
    description: str
    color: str
    technicians: tuple[Person, ...]

    def as_upstream(self) -> dict[str, Any]:
        return {
            "TeamListId": self.team_list_id,
            "TeamListDescription": self.description,
            "Color": self.color,
        }


@dataclass(frozen=True)
class DemoCompany:
    slot: int
    service_company_id: int
    name: str
    time_zone: str
    feature_toggles: dict[str, bool]
    teams: tuple[Team, ...]
    office_staff: tuple[Person, ...]

    @property
    def cities(self) -> tuple[City, ...]:
        return _CITIES_BY_ZONE[self.time_zone]

    @property
    def users(self) -> tuple[Person, ...]:
        technicians = tuple(tech for team in self.teams for tech in team.technicians)
        return technicians + self.office_staff

    def as_upstream(self) -> dict[str, Any]:
        return {
            "ServiceCompanyId": self.service_company_id,
            "Name": self.name,
            "IsActive": True,
            "TimeZoneInfoId": self.time_zone,
            "FeatureToggles": dict(self.feature_toggles),
            "Users": [user.as_upstream() for user in self.users],
        }


def _rng(*parts: object) -> random.Random:
    # A string seed goes through SHA-512, unlike hash(), so it is stable between runs.
    return random.Random(":".join(str(part) for part in parts))


def _fill_digits(template: str, rng: random.Random) -> str:
    return "".join(str(rng.randrange(10)) if ch == "#" else ch for ch in template)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _email_local_part(first: str, last: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", f"{first}.{last}".lower())


def _company_name(slot: int) -> str:
    base = _COMPANY_NAMES[slot % len(_COMPANY_NAMES)]
    round_number = slot // len(_COMPANY_NAMES)
    # Past one company per zone the names repeat; a branch number keeps them distinct.
    return base if round_number == 0 else f"{base} #{round_number + 1}"


class _PeopleFactory:
    """Hands out unique names (so emails are unique) and deterministic user ids."""

    def __init__(self, rng: random.Random, seed: int, service_company_id: int, domain: str) -> None:
        self._seed = seed
        self._service_company_id = service_company_id
        self._domain = domain
        self._issued = 0
        pair_count = len(_FIRST_NAMES) * len(_LAST_NAMES)
        self._name_order = iter(rng.sample(range(pair_count), k=pair_count))

    def person(self, role: str, **extra: Any) -> Person:
        pair = next(self._name_order)
        first = _FIRST_NAMES[pair // len(_LAST_NAMES)]
        last = _LAST_NAMES[pair % len(_LAST_NAMES)]
        self._issued += 1
        key = f"{self._seed}:{self._service_company_id}:{self._issued}"
        return Person(
            user_id=str(uuid.uuid5(_USER_NAMESPACE, key)),
            first_name=first,
            last_name=last,
            email=f"{_email_local_part(first, last)}@{self._domain}",
            role=role,
            **extra,
        )


def _build_teams(
    rng: random.Random, people: _PeopleFactory, service_company_id: int
) -> tuple[Team, ...]:
    teams: list[Team] = []
    employee_number = 0
    for team_index in range(rng.randint(3, 6)):
        colour_name, colour = _TEAM_COLOURS[team_index]
        team_list_id = service_company_id * 100 + team_index + 1
        technicians: list[Person] = []
        for position in range(1, rng.randint(2, 4) + 1):
            employee_number += 1
            technicians.append(
                people.person(
                    "Employee",
                    employee_information_id=f"{service_company_id}{employee_number:03d}",
                    team_list_id=team_list_id,
                    team_position=position,
                )
            )
        teams.append(Team(team_list_id, f"Team {colour_name}", colour, tuple(technicians)))
    return tuple(teams)


def _build_company(seed: int, slot: int) -> DemoCompany:
    rng = _rng(seed, "company", slot)
    service_company_id = 1001 + slot
    name = _company_name(slot)
    people = _PeopleFactory(rng, seed, service_company_id, f"{_slug(name)}.example")
    toggles = {toggle: rng.random() < _TOGGLE_ON_CHANCE[toggle] for toggle in TOGGLE_NAMES}
    teams = _build_teams(rng, people, service_company_id)
    office = [people.person("Office") for _ in range(rng.randint(1, 2))]
    admin = people.person("Administrator")
    return DemoCompany(
        slot=slot,
        service_company_id=service_company_id,
        name=name,
        time_zone=WINDOWS_TIME_ZONES[slot % len(WINDOWS_TIME_ZONES)],
        feature_toggles=toggles,
        teams=teams,
        office_staff=(*office, admin),
    )


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _money(value: float) -> float:
    return round(value, 2)


def _jobs_on(day: date, rng: random.Random) -> int:
    # Weekends are quieter, as in a real cleaning business; always 20-60 a day.
    weekday = day.weekday()
    if weekday == 6:
        return rng.randint(20, 24)
    if weekday == 5:
        return rng.randint(20, 32)
    return rng.randint(28, 60)


def _discounts(rng: random.Random, bill_rate: float) -> list[dict[str, Any]]:
    if rng.random() >= 0.25:
        return []
    description, percent, flat = rng.choice(_DISCOUNTS)
    amount = bill_rate * percent / 100 if percent is not None else flat or 0.0
    return [{"DiscountDescription": description, "DiscountAmount": _money(amount)}]


def _contact_infos(rng: random.Random, city: City, first: str, last: str) -> list[dict[str, Any]]:
    contacts: list[dict[str, Any]] = []
    if rng.random() < 0.35:
        contacts.append(
            {
                "ContactTypeId": CONTACT_HOME_PHONE,
                "ContactInfo": _fill_digits(city.phone_template, rng),
            }
        )
    if rng.random() < 0.85:
        contacts.append(
            {
                "ContactTypeId": CONTACT_CELL_PHONE,
                "ContactInfo": _fill_digits(city.phone_template, rng),
            }
        )
    if rng.random() < 0.8:
        mailbox = f"{_email_local_part(first, last)}{rng.randint(1, 99)}"
        domain = rng.choice(("example.com", "example.net", "example.org"))
        contacts.append({"ContactTypeId": CONTACT_EMAIL, "ContactInfo": f"{mailbox}@{domain}"})
    return contacts


def _notes_and_memos(rng: random.Random) -> dict[str, Any]:
    access = rng.choice(_ACCESS_TEMPLATES).format(
        code=_fill_digits("####", rng), alarm=_fill_digits("####", rng)
    )
    # Real MaidCentral data misspells this key now and then; consumers must accept both.
    access_key = "HomeAcessInformation" if rng.random() < 0.2 else "HomeAccessInformation"
    return {
        "EventInstructions": rng.choice(_EVENT_INSTRUCTIONS) if rng.random() < 0.6 else "",
        "HomeSpecialInstructions": rng.choice(_SPECIAL_INSTRUCTIONS) if rng.random() < 0.7 else "",
        access_key: access,
        "HomeInternalMemo": rng.choice(_INTERNAL_MEMOS) if rng.random() < 0.5 else "",
    }


def _home_information(rng: random.Random, city: City) -> dict[str, Any]:
    home: dict[str, Any] = {"HomeAddress1": f"{rng.randint(1, 9899)} {rng.choice(_STREETS)}"}
    if rng.random() < 0.15:
        home["HomeAddress2"] = f"Unit {rng.randint(1, 40)}"
    home["HomeCity"] = city.name
    home["HomeRegion"] = city.region
    home["HomePostalCode"] = _fill_digits(city.postal_template, rng)
    return home


def _scheduled_teams(rng: random.Random, company: DemoCompany, service: str) -> list[Team]:
    # Big jobs sometimes take two teams; everything else is one team.
    big_job = service in ("Deep Clean", "Move Out Clean", "Post-Construction Clean")
    team_count = 2 if big_job and rng.random() < 0.3 else 1
    return rng.sample(company.teams, k=team_count)


def _employee_schedules(teams: list[Team]) -> list[dict[str, Any]]:
    return [
        {
            "EmployeeInformationId": tech.employee_information_id,
            "FirstName": tech.first_name,
            "LastName": tech.last_name,
            "TeamListId": team.team_list_id,
            "TeamPosition": tech.team_position,
        }
        for team in teams
        for tech in team.technicians
    ]


def _make_job(rng: random.Random, company: DemoCompany, day: date, job_id: int) -> dict[str, Any]:
    service, (low_rate, high_rate), hour_choices = rng.choice(_SERVICES)
    allowed_hours = rng.choice(hour_choices)
    start = rng.randrange(7 * 60 + 30, 16 * 60 + 1, 15)
    bill_rate = _money(rng.uniform(low_rate, high_rate))
    teams = _scheduled_teams(rng, company, service)
    city = rng.choice(company.cities)
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    return {
        "JobInformationId": job_id,
        "JobDate": f"{day.isoformat()}T00:00:00",
        "JobStatus": "Confirmed" if rng.random() < 0.2 else "Scheduled",
        "ScheduledStartTime": _hhmm(start),
        "ScheduledEndTime": _hhmm(start + int(allowed_hours * 60)),
        "AllowedTime": allowed_hours,
        "BillRate": bill_rate,
        "FeeSplitRate": float(rng.choice((40, 42.5, 45, 50))),
        "AddOnRate": _money(rng.uniform(15, 60)) if rng.random() < 0.3 else 0.0,
        "RoomRate": _money(rng.uniform(10, 25)) if rng.random() < 0.25 else 0.0,
        "Discounts": _discounts(rng, bill_rate),
        "ScheduledTeams": [team.as_upstream() for team in teams],
        "EmployeeSchedules": _employee_schedules(teams),
        "CustomerInformation": {"CustomerFirstName": first, "CustomerLastName": last},
        "HomeInformation": _home_information(rng, city),
        "NotesAndMemos": _notes_and_memos(rng),
        "ContactInfos": _contact_infos(rng, city, first, last),
        "ServiceSet": {"ServiceSetDescription": service},
    }


def _apply_revision(jobs: list[dict[str, Any]], rng: random.Random, revision: int) -> None:
    """Change a few jobs the way an office does during the day: reschedule, cancel, add notes.

    Every changed job's memo names the revision, so any two revisions differ.
    """
    changed = rng.sample(range(len(jobs)), k=max(1, len(jobs) // 8))
    for index in changed:
        job = jobs[index]
        change = rng.choice(("reschedule", "cancel", "memo"))
        if change == "reschedule":
            start = rng.randrange(7 * 60 + 30, 16 * 60 + 1, 15)
            job["ScheduledStartTime"] = _hhmm(start)
            job["ScheduledEndTime"] = _hhmm(start + int(job["AllowedTime"] * 60))
            job["JobStatus"] = "Rescheduled"
        elif change == "cancel":
            job["JobStatus"] = "Cancelled"
        memos = job["NotesAndMemos"]
        memos["HomeInternalMemo"] = f"Updated by the office ({change}) [revision {revision}]"


def _first_job_id(company: DemoCompany, day: date) -> int:
    return (company.slot + 1) * _JOB_ID_COMPANY_STRIDE + day.toordinal() * _JOB_ID_DAY_STRIDE


class DemoWorld:
    """A fixed set of companies, their people, and their jobs on any day."""

    def __init__(self, companies: int = 6, seed: int = 0) -> None:
        if companies < 1:
            raise ValueError("a demo world needs at least one company")
        self.seed = seed
        self.companies: tuple[DemoCompany, ...] = tuple(
            _build_company(seed, slot) for slot in range(companies)
        )
        self._by_id = {str(company.service_company_id): company for company in self.companies}
        # Schedules are requested over and over (every sync, every benchmark round); the
        # encoded bytes are immutable, so caching them keeps the server fast and honest.
        self.encoded_jobs_for_day = functools.lru_cache(maxsize=4096)(self._encode_jobs_for_day)

    @property
    def service_company_ids(self) -> list[str]:
        return list(self._by_id)

    def company(self, service_company_id: str | int) -> DemoCompany | None:
        return self._by_id.get(str(service_company_id))

    def users_result(self) -> dict[str, Any]:
        """The ``Result`` of ``GET /api/dr-schedule/users``."""
        split = (len(self.companies) + 1) // 2
        chunks = [self.companies[:split], self.companies[split:]]
        groups = []
        for group_index, members in enumerate(chunk for chunk in chunks if chunk):
            groups.append(
                {
                    "ServiceCompanyGroupId": group_index + 1,
                    "ServiceCompanyGroupName": _GROUP_NAMES[group_index],
                    "IsActive": True,
                    "ServiceCompanies": [company.as_upstream() for company in members],
                }
            )
        return {"ServiceCompanyGroups": groups}

    def jobs_for_day(
        self, service_company_id: str | int, day: date, revision: int = 0
    ) -> list[dict[str, Any]]:
        """Upstream job records of one company-day; fresh dicts the caller may change."""
        company = self.company(service_company_id)
        if company is None:
            raise KeyError(f"unknown service company {service_company_id!r}")
        rng = _rng(self.seed, "jobs", company.service_company_id, day.isoformat())
        first_id = _first_job_id(company, day)
        jobs = [
            _make_job(rng, company, day, first_id + index) for index in range(_jobs_on(day, rng))
        ]
        if revision:
            revision_rng = _rng(
                self.seed, "revision", company.service_company_id, day.isoformat(), revision
            )
            _apply_revision(jobs, revision_rng, revision)
        return jobs

    def schedule(
        self,
        start: date,
        end: date,
        service_company_id: str | int | None = None,
        revision: int = 0,
    ) -> list[dict[str, Any]]:
        """What ``GET /api/dr-schedule`` returns: every day in range, one or all companies."""
        return [
            job
            for company_id, day in self.company_days(start, end, service_company_id)
            for job in self.jobs_for_day(company_id, day, revision)
        ]

    def company_days(
        self, start: date, end: date, service_company_id: str | int | None
    ) -> Iterator[tuple[str, date]]:
        """(company, day) pairs of a request, day by day, companies in a fixed order."""
        ids = self.service_company_ids if service_company_id is None else [str(service_company_id)]
        for offset in range((end - start).days + 1):
            for company_id in ids:
                yield company_id, start + timedelta(days=offset)

    def _encode_jobs_for_day(self, service_company_id: str, day: date, revision: int) -> bytes:
        return orjson.dumps(self.jobs_for_day(service_company_id, day, revision))
