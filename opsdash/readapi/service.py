"""The read path behind ``GET /functions/v1/get-schedule``: profile → metadata → blob → view.

Every step is cached, so a warm request touches neither the database nor the
storage:

- the viewer (profile + effective company toggles), refreshed after ``profile_ttl_s``;
- the company-day's ``schedule_data`` row (checksum, path), refreshed after
  ``schedule_ttl_s`` — about the longest a new sync takes to show;
- the parsed document by checksum, and the rendered view bytes by
  (checksum, company, view inputs) — both immutable, so only size-bounded.

The first two are refreshed ahead: past its TTL an entry is still served while
one background reload runs, so an expiry never makes the requests in flight
queue behind a query. Database and storage calls run in the thread pool,
never on the event loop, and concurrent misses for one key share one load.
:meth:`ScheduleService.warm_view` is the same lookup without any waiting, for
the fast path in :mod:`opsdash.readapi.fastpath`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from opsdash.engine.blobs import BlobNotFound, BlobStore, sha256_hex
from opsdash.engine.db import Database
from opsdash.engine.models import Company, ScheduleData, UserProfile
from opsdash.engine.verify import queue_resync
from opsdash.privacy import UnknownRole, schedule_view, view_inputs
from opsdash.readapi.cache import MISSING, CachePolicy, LruCache, RefreshingCache, SingleFlight
from opsdash.readapi.errors import Forbidden, NotFound, ServiceUnavailable
from opsdash.statelog import StateChangeLog

log = logging.getLogger("opsdash.readapi")

log = logging.getLogger("opsdash.readapi")

# Part of every ETag: bump it when the privacy rules or the view's encoding change,
# so clients holding a view rendered by older rules fetch the new one.
VIEW_VERSION = "1"
READY = "ready"
# Lost objects already reported, so each is logged and resynced once.
LOST_REMEMBERED = 10_000

ResyncRequest = Callable[[uuid.UUID, date], object]


class ObjectLost(ServiceUnavailable):
    """A ready day whose object is missing from storage; a resync is on its way."""

    logged = True  # the warning is logged once per lost object, not once per request

    def __init__(self) -> None:
        super().__init__(
            "the schedule is missing from storage; it is being restored, retry shortly"
        )


@dataclass(frozen=True)
class Viewer:
    """A verified user as the read API needs them."""

    profile_id: uuid.UUID
    role: str
    employee_id: str | None
    company_id: uuid.UUID | None
    portal_enabled: bool
    toggles: Mapping[str, Any]
    # privacy.view_inputs of this viewer, worked out once; None when the role is refused.
    view_inputs: tuple[str, ...] | None

    @property
    def may_read(self) -> bool:
        return self.company_id is not None and self.portal_enabled and self.view_inputs is not None


@dataclass(frozen=True)
class StoredSchedule:
    checksum: str
    storage_path: str


@dataclass(frozen=True)
class ViewRef:
    """Which view a request needs, known before anything is read from storage."""

    viewer: Viewer
    company_id: uuid.UUID
    day: date
    schedule: StoredSchedule
    inputs: tuple[str, ...]

    @property
    def etag(self) -> str:
        return view_etag(self.schedule.checksum, self.company_id, self.inputs)


@dataclass(frozen=True)
class RenderedView:
    body: bytes
    etag: str


def view_etag(checksum: str, company_id: uuid.UUID, inputs: tuple[str, ...]) -> str:
    """A strong ETag from the document checksum and everything else that shapes the view."""
    material = "\x1f".join((VIEW_VERSION, checksum, str(company_id), *inputs))
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


class ScheduleService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        policy: CachePolicy | None = None,
        *,
        request_resync: ResyncRequest | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self._request_resync = request_resync or (
            lambda company_id, day: queue_resync(db, company_id, day)
        )
        self._lost: OrderedDict[tuple[uuid.UUID, date, str], None] = OrderedDict()
        self._lost_lock = threading.Lock()
        self.policy = policy = policy or CachePolicy()
        self.outages = StateChangeLog(log)
        """Unreachable database or storage: logged when it starts, now and then, when it ends."""
        self._viewers: RefreshingCache[uuid.UUID, Viewer | None] = RefreshingCache(
            self._fetch_viewer,
            fresh_s=policy.profile_ttl_s,
            max_stale_s=policy.max_stale_s,
            max_entries=policy.profile_cache_entries,
            outages=self.outages,
        )
        self._schedules: RefreshingCache[tuple[uuid.UUID, date], StoredSchedule | None] = (
            RefreshingCache(
                self._fetch_schedule,
                fresh_s=policy.schedule_ttl_s,
                max_stale_s=policy.max_stale_s,
                max_entries=policy.schedule_cache_entries,
                # A new sync must show at once: never answer with the previous day
                # (and its ETag) once the metadata TTL is up.
                serve_stale=False,
                outages=self.outages,
            )
        )
        self._documents: LruCache[str, dict[str, Any]] = LruCache(
            max_entries=policy.document_cache_entries
        )
        self._views: LruCache[tuple[str, uuid.UUID, tuple[str, ...]], RenderedView] = LruCache(
            max_entries=policy.view_cache_entries,
            max_weight=policy.view_cache_bytes,
            weigh=lambda view: len(view.body),
        )
        self._view_loads: SingleFlight[tuple[str, uuid.UUID, tuple[str, ...]], RenderedView] = (
            SingleFlight()
        )

    # --- the request path --------------------------------------------------------------

    async def viewer(self, profile_id: uuid.UUID) -> Viewer:
        viewer = await self._viewers.get(profile_id)
        if viewer is None:
            raise NotFound("unknown profile")
        return viewer

    async def locate(self, viewer: Viewer, day: date) -> ViewRef:
        """The view ``viewer`` gets for ``day``; raises when they get none."""
        if viewer.company_id is None:
            raise Forbidden("the profile belongs to no company")
        if not viewer.portal_enabled:
            raise Forbidden("the portal is disabled for this company")
        if viewer.view_inputs is None:
            raise UnknownRole(viewer.role)
        schedule = await self._stored_schedule(viewer.company_id, day)
        if schedule is None:
            raise NotFound("schedule not ready")
        return ViewRef(viewer, viewer.company_id, day, schedule, viewer.view_inputs)

    def warm_view(self, profile_id: uuid.UUID, day: date) -> RenderedView | None:
        """The view :meth:`locate` + :meth:`render` would give, if every step is cached.

        Never blocks and never raises: anything not cached, or any answer other
        than the view, is None, and the caller takes the full route instead.
        """
        viewer = self._viewers.peek(profile_id)
        if viewer is MISSING or viewer is None or not viewer.may_read:
            return None
        assert viewer.company_id is not None and viewer.view_inputs is not None
        schedule = self._schedules.peek((viewer.company_id, day))
        if schedule is MISSING or schedule is None:
            return None
        view = self._views.get((schedule.checksum, viewer.company_id, viewer.view_inputs))
        return None if view is MISSING else view

    async def render(self, ref: ViewRef) -> RenderedView:
        key = (ref.schedule.checksum, ref.company_id, ref.inputs)
        view = self._views.get(key)
        if view is MISSING:
            view = await self._view_loads.run(key, lambda: self._render(ref))
        return view

    # --- loads (cache misses) ----------------------------------------------------------

    async def _fetch_viewer(self, profile_id: uuid.UUID) -> Viewer | None:
        return await run_in_threadpool(self._query_viewer, profile_id)

    def _query_viewer(self, profile_id: uuid.UUID) -> Viewer | None:
        query = (
            select(UserProfile, Company)
            .outerjoin(Company, col(UserProfile.company_id) == Company.id)
            .where(col(UserProfile.id) == profile_id)
        )
        with self.db.session() as session:
            row = session.execute(query).first()
        if row is None:
            return None
        profile, company = row
        toggles = company.effective_toggles() if company is not None else {}
        employee_id = profile.employee_information_id or None
        try:
            inputs: tuple[str, ...] | None = view_inputs(profile.role, employee_id, toggles)
        except UnknownRole:
            inputs = None
        return Viewer(
            profile_id=profile.id,
            role=profile.role,
            employee_id=employee_id,
            company_id=company.id if company is not None else None,
            portal_enabled=bool(company is not None and company.portal_enabled),
            toggles=toggles,
            view_inputs=inputs,
        )

    async def _stored_schedule(self, company_id: uuid.UUID, day: date) -> StoredSchedule | None:
        return await self._schedules.get((company_id, day))

    async def _fetch_schedule(self, key: tuple[uuid.UUID, date]) -> StoredSchedule | None:
        return await run_in_threadpool(self._query_schedule, *key)

    def _query_schedule(self, company_id: uuid.UUID, day: date) -> StoredSchedule | None:
        query = select(col(ScheduleData.checksum), col(ScheduleData.storage_path)).where(
            col(ScheduleData.company_id) == company_id,
            col(ScheduleData.date) == day,
            col(ScheduleData.status) == READY,
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return StoredSchedule(row.checksum, row.storage_path) if row is not None else None

    async def _render(self, ref: ViewRef) -> RenderedView:
        checksum, document = await self._document(ref)
        view = schedule_view(
            document,
            role=ref.viewer.role,
            employee_id=ref.viewer.employee_id,
            toggles=ref.viewer.toggles,
            company_id=str(ref.company_id),
        )
        rendered = RenderedView(orjson.dumps(view), view_etag(checksum, ref.company_id, ref.inputs))
        self._views.put((checksum, ref.company_id, ref.inputs), rendered)
        return rendered

    async def _document(self, ref: ViewRef) -> tuple[str, dict[str, Any]]:
        """The parsed document and its actual checksum."""
        expected = ref.schedule.checksum
        document = self._documents.get(expected)
        if document is not MISSING:
            return expected, document
        try:
            body = await run_in_threadpool(self.blobs.get, ref.schedule.storage_path)
        except BlobNotFound:
            body = await self._body_after_a_miss(ref)
        self.outages.succeeded("storage")
        actual = sha256_hex(body)
        if actual != expected:
            # A sync replaced the blob after the metadata was read: serve what the blob
            # holds now, and reread the metadata on the next request.
            self._schedules.drop((ref.company_id, ref.day))
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ServiceUnavailable("schedule storage returned a damaged document") from None
        if not isinstance(document, dict):
            raise ServiceUnavailable("schedule storage returned a damaged document")
        self._documents.put(actual, document)
        return actual, document

    async def _body_after_a_miss(self, ref: ViewRef) -> bytes:
        """The object the metadata named is gone.

        Blobs are content-addressed and a sync removes the version it replaced, so the
        metadata read a moment ago may name that one: read the metadata again, once. If
        it still names a missing object, the object is lost.
        """
        self._schedules.drop((ref.company_id, ref.day))
        fresh = await run_in_threadpool(self._query_schedule, ref.company_id, ref.day)
        if fresh is not None and fresh.storage_path != ref.schedule.storage_path:
            ref = replace(ref, schedule=fresh)
            try:
                return await run_in_threadpool(self.blobs.get, fresh.storage_path)
            except BlobNotFound:
                pass
        await run_in_threadpool(self._object_lost, ref)
        raise ObjectLost() from None

    def _object_lost(self, ref: ViewRef) -> None:
        """The metadata says ready but the object is gone: warn once, queue one resync."""
        self._schedules.drop((ref.company_id, ref.day))
        key = (ref.company_id, ref.day, ref.schedule.checksum)
        with self._lost_lock:
            if key in self._lost:
                return
            self._lost[key] = None
            while len(self._lost) > LOST_REMEMBERED:
                self._lost.popitem(last=False)
        log.warning(
            "%s is ready in schedule_data but missing from storage; queueing a resync",
            ref.schedule.storage_path,
        )
        try:
            self._request_resync(ref.company_id, ref.day)
        except Exception as error:  # the answer is 503 either way; the next sync heals it
            log.warning("could not queue the resync of %s: %s", ref.schedule.storage_path, error)
            with self._lost_lock:
                self._lost.pop(key, None)

    # --- health ------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise when the database or the blob store cannot be reached (blocking)."""
        with self.db.read() as conn:
            conn.execute(text("SELECT 1"))
        self.outages.succeeded("database")
        self.blobs.ping()
        self.outages.succeeded("storage")
