"""SupabaseBlobStore against a stand-in that answers like Supabase Storage v1.70.6.

The first tests pin the stand-in to docs/contracts.md's description of the real server, so the store
tests after them prove something about the real thing. What the store raises when a key is
wrong: the download route answers a rejected token as "Bucket not found" and row-level
security makes objects of a private bucket look missing to a non-service key, so the store
believes a "nothing there" only after an authenticated bucket lookup; a wrong key always
ends in BlobStoreUnavailable naming the service role key, never in BlobNotFound.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from opsdash.demo.server import DemoUpstream
from opsdash.engine.blobs import (
    BlobInfo,
    BlobNotFound,
    BlobStorePublic,
    BlobStoreUnavailable,
    InvalidBlobPath,
    LocalBlobStore,
    SupabaseBlobStore,
    content_path,
    schedule_path,
    sha256_hex,
)
from opsdash.engine.models import BackgroundJob, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings, migrated
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.supabase_storage_server import SupabaseStorageStandIn

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"
PATH = schedule_path("1001", "2026-12-01")
DOCUMENT = b'{"jobs": []}'

StoreFactory = Callable[..., SupabaseBlobStore]


@pytest.fixture
def storage() -> Iterator[SupabaseStorageStandIn]:
    with SupabaseStorageStandIn(JWT_SECRET) as standin:
        yield standin


@pytest.fixture
def make_store(storage: SupabaseStorageStandIn) -> Iterator[StoreFactory]:
    stores: list[SupabaseBlobStore] = []

    def make(key: str | None = None, **options: float) -> SupabaseBlobStore:
        store = SupabaseBlobStore(storage.url, key or storage.service_role_key, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> SupabaseBlobStore:
    ready = make_store()
    ready.ensure_bucket()
    return ready


def call_api(
    storage: SupabaseStorageStandIn, method: str, route: str, key: str | None = None, **request: Any
) -> httpx.Response:
    token = storage.service_role_key if key is None else key
    headers = {"Authorization": f"Bearer {token}", **request.pop("headers", {})}
    url = f"{storage.url}/storage/v1/{route}"
    return httpx.request(method, url, headers=headers, timeout=5, **request)


def upload(storage: SupabaseStorageStandIn, name: str, *, upsert: bool = False) -> httpx.Response:
    files = {"file": ("schedule.json", DOCUMENT, "application/json")}
    headers = {"x-upsert": "true"} if upsert else {}
    return call_api(storage, "POST", f"object/{BUCKET}/{name}", files=files, headers=headers)


# --- the stand-in answers as docs/contracts.md says the real server does --------------------------


def _duplicate_upload(storage: SupabaseStorageStandIn) -> httpx.Response:
    upload(storage, PATH)
    return upload(storage, PATH)


def _duplicate_bucket(storage: SupabaseStorageStandIn) -> httpx.Response:
    return call_api(storage, "POST", "bucket", json={"id": BUCKET, "name": BUCKET})


def _storage_database(status: int) -> Callable[[SupabaseStorageStandIn], httpx.Response]:
    def send(storage: SupabaseStorageStandIn) -> httpx.Response:
        storage.faults.storage_status = status
        return call_api(storage, "GET", f"bucket/{BUCKET}")

    return send


def _without_authorization(storage: SupabaseStorageStandIn) -> httpx.Response:
    url = f"{storage.url}/storage/v1/object/list/{BUCKET}"
    return httpx.post(url, json={"prefix": ""}, timeout=5)


DATABASE_TIMED_OUT = "The connection to the database timed out"
TOO_MANY_CONNECTIONS = "Too many connections issued to the database"

# (what is sent) → (HTTP status, body statusCode, error, code, message)
ERROR_ANSWERS = {
    "missing object": (
        lambda s: call_api(s, "GET", f"object/authenticated/{BUCKET}/{PATH}"),
        (400, "404", "not_found", "NoSuchKey", "Object not found"),
    ),
    "missing bucket": (
        lambda s: call_api(s, "GET", "bucket/no-such-bucket"),
        (400, "404", "Bucket not found", "NoSuchBucket", "Bucket not found"),
    ),
    "upload over an existing object": (
        _duplicate_upload,
        (400, "409", "Duplicate", "KeyAlreadyExists", "The resource already exists"),
    ),
    "existing bucket": (
        _duplicate_bucket,
        (400, "409", "Duplicate", "BucketAlreadyExists", "The resource already exists"),
    ),
    "forged token": (
        lambda s: call_api(
            s, "POST", f"object/list/{BUCKET}", key=s.mint_key(secret="x" * 40), json={}
        ),
        (400, "403", "Unauthorized", "AccessDenied", "signature verification failed"),
    ),
    "token that is not a JWT": (
        lambda s: call_api(s, "GET", f"object/authenticated/{BUCKET}/{PATH}", key="sb_secret_x"),
        (400, "403", "Unauthorized", "AccessDenied", "Invalid Compact JWS"),
    ),
    "forged token on the download route": (
        lambda s: call_api(s, "GET", f"object/{BUCKET}/{PATH}", key=s.mint_key(secret="x" * 40)),
        (400, "404", "Bucket not found", "NoSuchBucket", "Bucket not found"),
    ),
    "no Authorization header": (
        _without_authorization,
        (
            400,
            "400",
            "Error",
            "InvalidRequest",
            "headers must have required property 'authorization'",
        ),
    ),
    "upload refused by row-level security": (
        lambda s: call_api(
            s,
            "POST",
            f"object/{BUCKET}/{PATH}",
            key=s.mint_key("anon"),
            files={"file": ("schedule.json", DOCUMENT, "application/json")},
        ),
        (400, "403", "Unauthorized", "AccessDenied", "new row violates row-level security policy"),
    ),
    "empty bulk delete": (
        lambda s: call_api(s, "DELETE", f"object/{BUCKET}", json={"prefixes": []}),
        (400, "400", "Error", "InvalidRequest", "body/prefixes must NOT have fewer than 1 items"),
    ),
    "storage's database unreachable": (
        _storage_database(500),
        (500, "500", "Internal", "InternalError", "Internal Server Error"),
    ),
    "storage's database timing out": (
        _storage_database(544),
        (
            544,
            "544",
            "DatabaseTimeout",
            "DatabaseTimeout",
            "The connection to the database timed out",
        ),
    ),
    "storage's database out of connections": (
        _storage_database(429),
        (
            429,
            "429",
            "too_many_connections",
            "SlowDown",
            "Too many connections issued to the database",
        ),
    ),
}


@pytest.mark.parametrize("case", ERROR_ANSWERS.values(), ids=ERROR_ANSWERS.keys())
def test_stand_in_answers_errors_as_supabase_storage_1_70_6(
    storage: SupabaseStorageStandIn, case
) -> None:
    storage.create_bucket(BUCKET)
    send, (http_status, status, error, code, message) = case
    answer = send(storage)
    assert answer.status_code == http_status
    body = answer.json()
    assert (body["statusCode"], body["error"], body["code"], body["message"]) == (
        status,
        error,
        code,
        message,
    )


def test_stand_in_has_no_503_database_connection_limit(storage: SupabaseStorageStandIn) -> None:
    # Since v1.58.19 an exhausted pool is 429 SlowDown; 503 is only ever the gateway's.
    storage.faults.storage_status = 503
    storage.create_bucket(BUCKET)
    with pytest.raises(httpx.HTTPError):
        call_api(storage, "GET", f"bucket/{BUCKET}")


def test_stand_in_behind_a_failing_gateway_answers_an_html_page(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.faults.gateway_status = 502
    answer = call_api(storage, "GET", f"bucket/{BUCKET}")
    assert answer.status_code == 502
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text.startswith("<html>") and "502 Bad Gateway" in answer.text


def test_stand_in_unknown_route_names_the_path_storage_sees(
    storage: SupabaseStorageStandIn,
) -> None:
    answer = call_api(storage, "GET", "no/such/route")
    assert answer.status_code == 404
    assert answer.json() == {
        "message": "Route GET:/no/such/route not found",
        "error": "Not Found",
        "statusCode": 404,
    }


def _names(storage: SupabaseStorageStandIn, prefix: str) -> list[str]:
    answer = call_api(storage, "POST", f"object/list/{BUCKET}", json={"prefix": prefix})
    return [entry["name"] for entry in answer.json()]


def test_stand_in_lists_prefixes_case_insensitively_and_literally(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.create_bucket(BUCKET)
    for name in ["acme_co/a.json", "acmeXco/b.json", "ACME_CO/c.json", "50%/d.json", "50x/e.json"]:
        storage.put_object(BUCKET, name, b"{}")
    # "_" and "%" are not wildcards; "ACME_CO" and "acme_co" are one prefix.
    assert _names(storage, "acme_co") == ["a.json", "c.json"]
    assert _names(storage, "50%") == ["d.json"]


def test_stand_in_merges_folders_differing_in_case_and_sorts_in_lower_case(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.create_bucket(BUCKET)
    for name in ["Beta/1.json", "beta/2.json", "alpha/3.json", "Zulu/4.json", "a.json", "B.json"]:
        storage.put_object(BUCKET, name, b"{}")
    # One walk in lower(name) order: folders and files together, a folder spelled as the
    # first name met in it ("Beta/1.json" sorts before "beta/2.json" in bytes).
    assert _names(storage, "") == ["a.json", "alpha", "B.json", "Beta", "Zulu"]


def _list_v2(storage: SupabaseStorageStandIn, key: str | None = None, **body: Any) -> Any:
    return call_api(storage, "POST", f"object/list-v2/{BUCKET}", key=key, json=body).json()


def test_stand_in_list_v2_matches_prefixes_case_sensitively_and_literally(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.create_bucket(BUCKET)
    names = ["acme_co/a.json", "acmeXco/b.json", "ACME_CO/c.json", "50%/d.json", "50x/e.json"]
    for name in names:
        storage.put_object(BUCKET, name, b"{}")
    # Unlike list (v1), list-v2 is a LIKE on the name with "_" and "%" escaped: the prefix
    # is taken as it is written, case included, and names come whole, in byte order.
    assert [o["name"] for o in _list_v2(storage, prefix="acme_co")["objects"]] == [names[0]]
    assert [o["name"] for o in _list_v2(storage, prefix="50%")["objects"]] == [names[3]]
    everything = _list_v2(storage)["objects"]
    assert [o["name"] for o in everything] == sorted(names, key=str.encode)


def test_stand_in_list_v2_pages_by_cursor_at_most_1000_at_a_time(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.create_bucket(BUCKET)
    names = [f"1001/2026-12-01/{n:04d}.json" for n in range(1003)]
    for name in names:
        storage.put_object(BUCKET, name, b"{}")
    first = _list_v2(storage, prefix="1001/", limit=5000)  # capped at 1,000
    assert first["hasNext"] is True and len(first["objects"]) == 1000
    assert first["nextCursorKey"] == names[999]
    assert base64.b64decode(first["nextCursor"]) == f"l:{names[999]}".encode()
    second = _list_v2(storage, prefix="1001/", limit=2, cursor=first["nextCursor"])
    assert [o["name"] for o in second["objects"]] == names[1000:1002]
    # A cursor handed out for a cursor carries the sort order too.
    assert base64.b64decode(second["nextCursor"]) == f"l:{names[1001]}\no:asc".encode()
    last = _list_v2(storage, prefix="1001/", limit=2, cursor=second["nextCursor"])
    assert last == {"hasNext": False, "folders": [], "objects": last["objects"]}
    assert [o["name"] for o in last["objects"]] == names[1002:]


def test_stand_in_list_v2_answers_shapes_and_errors_as_the_real_server(
    storage: SupabaseStorageStandIn,
) -> None:
    storage.create_bucket(BUCKET)
    created = upload(storage, PATH).json()
    [row] = _list_v2(storage, prefix="1001/")["objects"]
    assert set(row) == {"id", "name", "metadata", "updated_at", "created_at", "last_accessed_at"}
    assert (row["id"], row["name"]) == (created["Id"], PATH)
    assert row["metadata"]["size"] == len(DOCUMENT)
    # Row-level security hides a private bucket's objects from other keys; an unknown
    # bucket is a query that finds no rows. Neither is an error.
    empty = {"hasNext": False, "folders": [], "objects": []}
    assert _list_v2(storage, key=storage.mint_key("anon"), prefix="1001/") == empty
    unknown = call_api(storage, "POST", "object/list-v2/no-such-bucket", json={})
    assert unknown.json() == empty
    refused = call_api(
        storage, "POST", f"object/list-v2/{BUCKET}", key=storage.mint_key(secret="x" * 40)
    )
    assert (refused.status_code, refused.json()["code"]) == (400, "AccessDenied")
    no_header = httpx.post(f"{storage.url}/storage/v1/object/list-v2/{BUCKET}", json={})
    assert no_header.json()["code"] == "InvalidRequest"
    assert _list_v2(storage, limit=0)["message"] == "body/limit must be >= 1"
    bad_cursor = call_api(storage, "POST", f"object/list-v2/{BUCKET}", json={"cursor": "eDp5"})
    assert (bad_cursor.status_code, bad_cursor.json()["error"]) == (500, "Internal")
    assert storage.count("POST", "object/list-v2") == 7


def test_stand_in_success_answers_have_the_real_shapes(storage: SupabaseStorageStandIn) -> None:
    storage.create_bucket(BUCKET)
    created = upload(storage, PATH).json()
    assert created["Key"] == f"{BUCKET}/{PATH}"
    assert uuid.UUID(created["Id"])

    download = call_api(storage, "GET", f"object/{BUCKET}/{PATH}")
    assert download.content == DOCUMENT
    assert download.headers["content-type"] == "application/json"
    assert download.headers["cache-control"] == "no-cache"
    assert download.headers["etag"] == f'"{hashlib.md5(DOCUMENT).hexdigest()}"'
    assert download.headers["last-modified"].endswith(" GMT")

    listed = call_api(storage, "POST", f"object/list/{BUCKET}", json={"prefix": "1001"}).json()
    assert listed == [
        {
            "name": "2026-12-01",
            "id": None,
            "updated_at": None,
            "created_at": None,
            "last_accessed_at": None,
            "metadata": None,
        }
    ]
    day = call_api(storage, "POST", f"object/list/{BUCKET}", json={"prefix": "1001/2026-12-01"})
    [entry] = day.json()
    assert entry["name"] == "schedule.json"
    assert entry["id"] == created["Id"]
    assert set(entry["metadata"]) == {
        "eTag",
        "size",
        "mimetype",
        "cacheControl",
        "lastModified",
        "contentLength",
        "httpStatusCode",
    }

    first = storage.object(BUCKET, PATH)
    assert first is not None
    upload(storage, PATH, upsert=True)
    bulk = call_api(storage, "DELETE", f"object/{BUCKET}", json={"prefixes": [PATH]}).json()
    [row] = bulk
    assert row["name"] == PATH
    assert (row["owner"], row["owner_id"]) == ("", "")
    assert "user_metadata" in row
    assert uuid.UUID(row["version"]) and row["version"] != first.version  # a new version
    # An upsert keeps the creation time in last_accessed_at.
    assert row["last_accessed_at"] == row["created_at"]
    assert row["updated_at"] >= row["created_at"]
    again = call_api(storage, "DELETE", f"object/{BUCKET}", json={"prefixes": [PATH]})
    assert again.json() == []
    upload(storage, PATH)
    single = call_api(storage, "DELETE", f"object/{BUCKET}/{PATH}")
    assert single.json() == {"message": "Successfully deleted"}


# --- the store ---------------------------------------------------------------------------


def test_ensure_bucket_creates_a_private_bucket_and_a_second_call_is_harmless(
    storage: SupabaseStorageStandIn, make_store: StoreFactory
) -> None:
    store = make_store()
    store.ensure_bucket()
    assert storage.buckets[BUCKET].public is False
    store.ensure_bucket()  # the storage API answers 409 BucketAlreadyExists
    store.ping()


def test_ensure_bucket_refuses_an_existing_public_bucket(
    storage: SupabaseStorageStandIn, make_store: StoreFactory
) -> None:
    storage.create_bucket(BUCKET, public=True)
    with pytest.raises(BlobStoreUnavailable, match="is public"):
        make_store().ensure_bucket()


def test_put_get_and_upsert_over_an_existing_object(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore
) -> None:
    store.put(PATH, b'{"a": 1}')
    store.put(PATH, b'{"a": 2}')
    assert store.get(PATH) == b'{"a": 2}'
    stored = storage.object(BUCKET, PATH)
    assert stored is not None
    assert stored.mimetype == "application/json"
    # An empty cacheControl is the only way to get the server's "no-cache".
    assert stored.cache_control == "no-cache"


def test_get_of_a_missing_object_is_blob_not_found(store: SupabaseBlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get(PATH)


def test_get_from_a_missing_bucket_is_not_blob_not_found(make_store: StoreFactory) -> None:
    with pytest.raises(BlobStoreUnavailable, match="not found"):
        make_store().get(PATH)


def test_list_finds_every_document_under_a_folder_like_the_local_store(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore, tmp_path: Path
) -> None:
    local = LocalBlobStore(tmp_path / "blobs")
    days = [("1001", "2026-12-01"), ("1001", "2026-12-02"), ("1002", "2026-12-01")]
    days.append(("acme_co-2", "2026-12-03"))
    bodies = {schedule_path(company, day): f'{{"day": "{day}"}}'.encode() for company, day in days}
    for path, body in bodies.items():
        store.put(path, body)
        local.put(path, body)
    # The dashboard leaves placeholders in folders it creates; neither store lists them.
    storage.put_object(BUCKET, "1001/.emptyFolderPlaceholder", b"")

    assert [info.path for info in store.list_blobs("1001")] == [
        "1001/2026-12-01/schedule.json",
        "1001/2026-12-02/schedule.json",
    ]
    only_day = "1002/2026-12-01/schedule.json"
    assert store.list_blobs("1002") == [BlobInfo(only_day, len(bodies[only_day]))]
    for prefix in ["", "1001", "1001/", "1001/2026-12-02", "acme_co-2", "9999"]:
        assert store.list_blobs(prefix) == local.list_blobs(prefix), prefix


def test_list_pages_through_more_objects_than_one_answer(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore, make_store: StoreFactory
) -> None:
    paths = [schedule_path("1001", f"2026-12-0{day}") for day in range(1, 6)]
    for path in paths:
        store.put(path, b"{}")
    paging = make_store(list_page_size=2)
    storage.reset_counts()
    assert [info.path for info in paging.list_blobs("1001")] == paths
    assert storage.count("POST", "object/list-v2") == 3  # 2 + 2 + 1
    assert [info.path for info in paging.list_blobs()] == paths


def test_list_of_a_company_is_one_request_per_1000_objects_with_sizes(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore
) -> None:
    start = date(2026, 1, 1)
    paths = [schedule_path("1001", start + timedelta(days=n)) for n in range(1001)]
    for n, path in enumerate(paths):
        storage.put_object(BUCKET, path, b"x" * (n % 7))
    storage.put_object(BUCKET, schedule_path("1002", start), b"{}")
    storage.reset_counts()
    listed = store.list_blobs("1001")
    # One folder level per request (list v1) would be 1,002 requests; list-v2 pages whole names.
    assert storage.count("POST", "object/list-v2") == 2
    assert storage.count() == 2
    assert listed == [BlobInfo(path, n % 7) for n, path in enumerate(paths)]


def test_a_company_id_with_an_underscore_lists_its_own_documents_only(
    store: SupabaseBlobStore, tmp_path: Path
) -> None:
    local = LocalBlobStore(tmp_path / "blobs")
    mine = schedule_path("acme_1", "2026-12-01")
    # "_" is a LIKE wildcard and list v1 ignored case: neither neighbour may show up.
    others = [schedule_path(company, "2026-12-01") for company in ("acmeX1", "ACME_1", "acme_10")]
    for target in (store, local):
        for path in [mine, *others]:
            target.put(path, b"{}")
    assert store.list_blobs("acme_1") == local.list_blobs("acme_1") == [BlobInfo(mine, 2)]
    assert [info.path for info in store.list_blobs("acmeX1")] == [others[0]]


def test_delete_removes_and_deleting_again_is_harmless(store: SupabaseBlobStore) -> None:
    store.put(PATH, b"{}")
    store.delete(PATH)
    with pytest.raises(BlobNotFound):
        store.get(PATH)
    store.delete(PATH)
    assert store.list_blobs() == []


@pytest.mark.parametrize("path", ["../outside.json", "1001/../../x.json", "/1001/x.json", ""])
def test_dot_and_empty_segments_never_reach_storage(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore, path: str
) -> None:
    storage.faults.drop_connections = True  # any request would fail differently
    for operation in (lambda: store.get(path), lambda: store.put(path, b"{}")):
        with pytest.raises(InvalidBlobPath):
            operation()


def test_ping_without_the_bucket_is_unavailable(make_store: StoreFactory) -> None:
    with pytest.raises(BlobStoreUnavailable, match="not found"):
        make_store().ping()


# --- a wrong key ---------------------------------------------------------------------------

WRONG_KEYS: dict[str, Callable[[SupabaseStorageStandIn], str]] = {
    "signed with another project's secret": lambda s: s.mint_key(secret="another" * 8),
    "not a JWT": lambda s: "sb_secret_0123456789abcdefghijklmnop",
    "the anon key": lambda s: s.mint_key("anon"),
}

OPERATIONS: dict[str, Callable[[SupabaseBlobStore], object]] = {
    "ensure_bucket": lambda store: store.ensure_bucket(),
    "put": lambda store: store.put(PATH, b'{"overwritten": true}'),
    "get": lambda store: store.get(PATH),
    "list": lambda store: store.list_blobs(),
    "delete": lambda store: store.delete(PATH),
    "ping": lambda store: store.ping(),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
@pytest.mark.parametrize("wrong_key", WRONG_KEYS.values(), ids=WRONG_KEYS.keys())
def test_a_wrong_key_is_a_clear_error_and_never_blob_not_found(
    storage: SupabaseStorageStandIn,
    store: SupabaseBlobStore,
    make_store: StoreFactory,
    wrong_key: Callable[[SupabaseStorageStandIn], str],
    operation: Callable[[SupabaseBlobStore], object],
) -> None:
    store.put(PATH, b'{"kept": true}')
    with pytest.raises(BlobStoreUnavailable, match="service role key"):
        operation(make_store(wrong_key(storage)))
    assert storage.stored(BUCKET) == {PATH: b'{"kept": true}'}


# --- storage down or failing ---------------------------------------------------------------

FAULTS: dict[str, Callable[[SupabaseStorageStandIn], None]] = {
    "gateway answers 502": lambda s: setattr(s.faults, "gateway_status", 502),
    "gateway answers 503": lambda s: setattr(s.faults, "gateway_status", 503),
    "storage answers 500": lambda s: setattr(s.faults, "storage_status", 500),
    "storage answers 544": lambda s: setattr(s.faults, "storage_status", 544),
    "storage answers 429": lambda s: setattr(s.faults, "storage_status", 429),
    "connections dropped": lambda s: setattr(s.faults, "drop_connections", True),
    "server stopped": lambda s: s.stop(),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_storage_down_or_failing_is_unavailable(
    storage: SupabaseStorageStandIn,
    store: SupabaseBlobStore,
    fault: Callable[[SupabaseStorageStandIn], None],
    operation: Callable[[SupabaseBlobStore], object],
) -> None:
    store.put(PATH, b"{}")
    fault(storage)
    with pytest.raises(BlobStoreUnavailable):
        operation(store)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_storage_errors_are_one_short_line_never_a_page(
    storage: SupabaseStorageStandIn,
    store: SupabaseBlobStore,
    fault: Callable[[SupabaseStorageStandIn], None],
) -> None:
    store.put(PATH, b"{}")
    fault(storage)
    with pytest.raises(BlobStoreUnavailable) as raised:
        store.get(PATH)
    message = str(raised.value)
    assert "\n" not in message and "<" not in message and len(message) < 300, message
    assert raised.value.__cause__ is None  # no chained traceback to log


def test_a_stalled_storage_is_unavailable_within_the_read_timeout(
    storage: SupabaseStorageStandIn, make_store: StoreFactory
) -> None:
    store = make_store(read_timeout_s=0.3, connect_timeout_s=0.3)
    store.ensure_bucket()
    store.put(PATH, b"{}")
    storage.faults.stall = True
    for operation in (store.ping, lambda: store.get(PATH), lambda: store.put(PATH, b"{}")):
        started = time.monotonic()
        with pytest.raises(BlobStoreUnavailable, match="timed out"):
            operation()
        assert time.monotonic() - started < 2.0
    storage.faults.clear()
    assert store.get(PATH) == b"{}"


def test_a_gateway_page_becomes_its_title(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore
) -> None:
    storage.faults.gateway_status = 502
    with pytest.raises(BlobStoreUnavailable) as raised:
        store.ping()
    assert (
        str(raised.value) == "Supabase Storage is failing (HTTP 502 InternalError: 502 Bad Gateway)"
    )


def test_a_bucket_made_public_fails_ping(
    storage: SupabaseStorageStandIn, store: SupabaseBlobStore
) -> None:
    store.ping()
    storage.buckets[BUCKET].public = True
    with pytest.raises(BlobStorePublic, match="is public"):
        store.ping()


def test_list_sizes_and_delete_many_match_the_local_store(
    store: SupabaseBlobStore, make_store: StoreFactory, tmp_path: Path
) -> None:
    local = LocalBlobStore(tmp_path / "blobs")
    paths = [schedule_path("1001", f"2026-12-0{day}") for day in range(1, 6)]
    paths.append(schedule_path("1002", "2026-12-01"))
    for n, path in enumerate(paths):
        store.put(path, b"{}" * n)
        local.put(path, b"{}" * n)
    assert store.list_blobs("1001") == local.list_blobs("1001")
    assert [info.size for info in store.list_blobs("1001")] == [0, 2, 4, 6, 8]
    assert store.list_blobs("9999") == local.list_blobs("9999") == []
    doomed = [*paths[:3], schedule_path("1001", "2026-11-01")]  # one that is not there
    assert store.delete_many(doomed) == local.delete_many(doomed) == 3
    assert [info.path for info in store.list_blobs()] == [info.path for info in local.list_blobs()]
    assert [info.path for info in store.list_blobs()] == paths[3:]


def test_content_addressed_documents_are_listed_like_the_fixed_name(
    store: SupabaseBlobStore, tmp_path: Path
) -> None:
    local = LocalBlobStore(tmp_path / "blobs")
    legacy = schedule_path("1001", "2026-12-01")  # rows from before content addressing
    current = content_path("1001", "2026-12-02", sha256_hex(b"{}"))
    # A new version beside the old one, for the moment before the old one is removed.
    newer = content_path("1001", "2026-12-02", sha256_hex(b"{ }"))
    stray = "1001/2026-12-01/notes.json"  # not a schedule document
    for target in (store, local):
        for path, body in ((legacy, b"{}"), (current, b"{}"), (newer, b"{ }"), (stray, b"x")):
            target.put(path, body)
    expected = sorted([legacy, current, newer])
    assert [info.path for info in store.list_blobs("1001")] == expected
    assert [info.path for info in local.list_blobs("1001")] == expected
    # Two documents in one day, each with its own size: which one is published is for
    # schedule_data.storage_path to say.
    assert store.list_blobs("1001") == local.list_blobs("1001")
    assert {info.path: info.size for info in store.list_blobs("1001/2026-12-02")} == {
        current: 2,
        newer: 3,
    }


# --- the engine end to end -----------------------------------------------------------------


def test_engine_sync_stores_every_company_day_in_supabase_storage(
    db_url: str, tmp_path: Path, demo_upstream: DemoUpstream, storage: SupabaseStorageStandIn
) -> None:
    # A Supabase project answers Auth too: the users sync maintains the portal's Auth users.
    project = SupabaseAuthStandIn(JWT_SECRET, storage=storage)
    project.start()
    settings = engine_settings(
        migrated(db_url),
        tmp_path / "data",
        demo_upstream.url,
        supabase_url=project.url,
        supabase_service_role_key=storage.service_role_key,
    )
    engine = Engine(settings)
    try:
        assert isinstance(engine.blobs, SupabaseBlobStore)
        engine.sync()
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=30, poll_s=0.05), "the sync did not finish"
        with engine.db.session() as session:
            rows = list(session.execute(select(ScheduleData)).scalars())
            statuses = set(session.execute(select(BackgroundJob.status)).scalars())
    finally:
        engine.stop()
        if isinstance(engine.blobs, SupabaseBlobStore):
            engine.blobs.close()
        project.stop()

    assert statuses == {JobStatus.COMPLETED}
    companies = len(demo_upstream.world.service_company_ids)
    assert len(rows) == companies * settings.days_ahead
    stored = storage.stored(BUCKET)
    assert set(stored) == {row.storage_path for row in rows}
    for row in rows:
        assert hashlib.sha256(stored[row.storage_path]).hexdigest() == row.checksum
    assert not settings.blob_root.exists(), "nothing should have gone to local blobs"
