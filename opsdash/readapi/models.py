"""Response models: what the OpenAPI document promises each route answers.

The schedule route sends bytes it rendered and cached itself (see
``readapi/service.py``), so these models document the shape rather than
validate each answer; the tests hold the two together (schemathesis checks
every answer against this schema). Optional job fields are exactly the ones the
privacy view may leave out for a technician.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, safe to show to a user.")


class ContactInfo(BaseModel):
    phone: str | None = Field(default=None, description="Absent when phones are hidden.")
    email: str | None = Field(default=None, description="Absent when emails are hidden.")


class Discount(BaseModel):
    description: str | None
    amount: float | None


class EmployeeSchedule(BaseModel):
    EmployeeInformationId: str
    FirstName: str | None
    LastName: str | None
    TeamListId: str | None


class Job(BaseModel):
    model_config = ConfigDict(title="ScheduleJob")

    jobId: str
    date: str
    startTime: str | None
    endTime: str | None
    status: str | None
    serviceType: str | None
    customerName: str | None
    address: str | None
    teamIds: list[str]
    instructions: str | None
    employeeSchedules: list[EmployeeSchedule]
    billRate: float | None = Field(default=None, description="Absent for technicians unless shown.")
    feeSplitRate: float | None = Field(default=None, description="As billRate.")
    addOnRate: float | None = Field(default=None, description="As billRate.")
    roomRate: float | None = Field(default=None, description="As billRate.")
    contactInfo: ContactInfo | None = Field(
        default=None, description="Absent for technicians when phones and emails are hidden."
    )
    discounts: list[Discount] | None = Field(
        default=None, description="Absent for technicians when discounts are hidden."
    )
    internalMemo: str | None = Field(default=None, description="Never sent to technicians.")
    accessInformation: str | None = Field(default=None, description="Never sent to technicians.")


class Employee(BaseModel):
    employeeInformationId: str
    firstName: str | None
    lastName: str | None


class Team(BaseModel):
    teamListId: str
    description: str | None
    color: str | None


class ScheduleView(BaseModel):
    """A company-day schedule as the user may see it."""

    companyId: str
    serviceCompanyId: str
    date: str
    generatedAt: str
    jobs: list[Job]
    employees: list[Employee] = Field(
        description="For technicians, only the people on their own jobs."
    )
    teams: list[Team] = Field(description="For technicians, only the teams on their own jobs.")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    blobs: str
