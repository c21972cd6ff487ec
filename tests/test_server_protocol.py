"""storekeeper.server spoken to with plain http.client: what any HTTP client (and the
encore client) relies on."""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from _http_servers import Served, served_in_thread
from storekeeper.backends.http_protocol import encode_batch, quote_key
from storekeeper.backends.memory import DictMemoryStore
from storekeeper.testing.store import WEIRD_KEYS


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    store = DictMemoryStore()
    store.connect()
    with served_in_thread(store) as found:
        yield found


@pytest.fixture(autouse=True)
def _clean(served: Served) -> None:
    served.clear()


def request(
    served: Served,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {}, **options)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def data_path(key: str, part: str = "data") -> str:
    return f"/store/{quote_key(key)}/{part}"


# -- reads -------------------------------------------------------------------------------
def test_head_gives_size_date_and_tag_and_404_for_a_missing_key(served: Served) -> None:
    response, _ = request(served, "HEAD", data_path("nope"))
    assert response.status == 404
    served.backing.set("k", (b"hello", {"a": 1}))
    response, body = request(served, "HEAD", data_path("k"))
    assert response.status == 200 and body == b""
    assert response.getheader("Content-Length") == "5"
    assert response.getheader("ETag") == f'"{served.backing.get("k").version}"'
    modified = email.utils.parsedate_to_datetime(response.getheader("Last-Modified") or "")
    assert abs(modified.timestamp() - time.time()) < 5


def test_last_modified_changes_when_only_the_metadata_changes(served: Served) -> None:
    served.backing.set("k", (b"x", {}))
    before, _ = request(served, "HEAD", data_path("k"))
    time.sleep(1.05)  # Last-Modified has whole seconds
    response, _ = request(served, "PUT", data_path("k", "metadata"), body=b'{"b": 2}')
    assert response.status == 204
    after, _ = request(served, "HEAD", data_path("k"))
    assert after.getheader("Last-Modified") != before.getheader("Last-Modified")
    assert after.getheader("ETag") != before.getheader("ETag")


def test_get_sends_a_length_and_never_chunks_or_compresses(served: Served) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: streamed, not read at once
    served.backing.set("big", (payload, {}))
    headers = {"Accept-Encoding": "gzip, deflate, br"}
    response, body = request(served, "GET", data_path("big"), headers=headers)
    assert response.status == 200 and body == payload
    assert response.getheader("Content-Length") == str(len(payload))
    assert response.getheader("Transfer-Encoding") is None
    assert response.getheader("Content-Encoding") is None


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=2-4", 206, b"cde", "bytes 2-4/10"),
        ("bytes=-3", 206, b"hij", "bytes 7-9/10"),
        ("bytes=5-", 206, b"fghij", "bytes 5-9/10"),
        ("bytes=8-100", 206, b"ij", "bytes 8-9/10"),
        ("bytes=0-0,2-3", 200, b"abcdefghij", None),  # several ranges: the whole value
        ("items=1-2", 200, b"abcdefghij", None),
        ("bytes=10-", 416, None, "bytes */10"),
    ],
)
def test_ranges(
    served: Served, header: str, status: int, expected: bytes | None, content_range: str | None
) -> None:
    served.backing.set("r", (b"abcdefghij", {}))
    response, body = request(served, "GET", data_path("r"), headers={"Range": header})
    assert response.status == status
    assert response.getheader("Content-Range") == content_range
    if expected is not None:
        assert body == expected
        assert response.getheader("Content-Length") == str(len(expected))


def test_if_none_match_gives_304(served: Served) -> None:
    version = served.backing.set("k", (b"x", {}))
    response, body = request(
        served, "GET", data_path("k"), headers={"If-None-Match": f'"{version}"'}
    )
    assert response.status == 304 and body == b""
    response, body = request(served, "GET", data_path("k"), headers={"If-None-Match": '"other"'})
    assert response.status == 200 and body == b"x"


def test_metadata_get_carries_the_datas_etag_and_answers_if_none_match(served: Served) -> None:
    served.backing.set("k", (b"x", {"a": 1, "b": 2}))
    data, _ = request(served, "GET", data_path("k"))
    tag = data.getheader("ETag")
    assert tag == f'"{served.backing.get("k").version}"'
    for path in (data_path("k", "metadata"), data_path("k", "metadata") + "?select=a"):
        response, body = request(served, "GET", path)
        assert response.status == 200 and response.getheader("ETag") == tag, path
        response, body = request(served, "GET", path, headers={"If-None-Match": tag})
        assert (response.status, body) == (304, b""), path
        assert response.getheader("ETag") == tag
    response, body = request(served, "GET", data_path("k", "metadata"), headers={"If-Match": tag})
    assert (response.status, json.loads(body)) == (200, {"a": 1, "b": 2})
    response, _ = request(served, "GET", data_path("k", "metadata"), headers={"If-Match": '"x"'})
    assert response.status == 412
    served.backing.update_metadata("k", {"a": 3})  # a metadata write makes a new version
    response, body = request(
        served, "GET", data_path("k", "metadata"), headers={"If-None-Match": tag}
    )
    assert (response.status, json.loads(body)) == (200, {"a": 3, "b": 2})
    head, _ = request(served, "HEAD", data_path("k"))
    assert response.getheader("ETag") == head.getheader("ETag") != tag


# -- conditional writes --------------------------------------------------------------------
def test_conditional_puts_map_to_preconditions(served: Served) -> None:
    version = served.backing.set("k", (b"old", {"m": 1}))
    for headers in ({"If-Match": '"stale"'}, {"If-None-Match": "*"}):
        response, body = request(served, "PUT", data_path("k"), body=b"new", headers=headers)
        assert response.status == 412, body
        assert json.loads(body)["error"] == "ConflictError"
        assert served.backing.to_bytes("k") == b"old"
    response, _ = request(served, "PUT", data_path("gone"), body=b"x", headers={"If-Match": "*"})
    assert response.status == 412 and not served.backing.exists("gone")
    response, _ = request(
        served, "PUT", data_path("k"), body=b"new", headers={"If-Match": f'"{version}"'}
    )
    assert response.status == 204
    assert served.backing.get("k").bytes == b"new"  # type: ignore[attr-defined]
    assert served.backing.get_metadata("k") == {"m": 1}
    response, _ = request(
        served, "PUT", data_path("fresh"), body=b"1", headers={"If-None-Match": "*"}
    )
    assert response.status == 204 and served.backing.to_bytes("fresh") == b"1"


def test_conditional_delete(served: Served) -> None:
    served.backing.set("k", (b"x", {}))
    response, _ = request(served, "DELETE", "/store/k", headers={"If-Match": '"stale"'})
    assert response.status == 412 and served.backing.exists("k")
    response, _ = request(served, "DELETE", "/store/k")
    assert response.status == 204 and not served.backing.exists("k")
    response, _ = request(served, "DELETE", "/store/k")
    assert response.status == 404


# -- uploads ---------------------------------------------------------------------------------
def _cut_off(served: Served, head: bytes, body: bytes) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as raw:
        raw.sendall(head + body)
        time.sleep(0.2)  # the server is reading the body now
    # Closing mid-body: the server must notice and keep the old value.


@pytest.mark.parametrize("kind", ["chunked", "large", "small"])
def test_an_upload_cut_off_midway_leaves_the_old_value(served: Served, kind: str) -> None:
    served.backing.set("k", (b"old", {"m": 1}))
    path = data_path("k").encode()
    if kind == "chunked":
        head = b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"10000\r\n" + b"n" * 0x8000
    else:
        length = b"1048576" if kind == "large" else b"1000"  # streamed / read at once
        head = b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
        head += b"\r\n\r\n"
        body = b"n" * (300_000 if kind == "large" else 500)
    _cut_off(served, head, body)
    time.sleep(0.3)  # the server unwinds the upload
    response, data = request(served, "GET", data_path("k"))
    assert response.status == 200 and data == b"old"
    assert served.backing.get_metadata("k") == {"m": 1}


def test_value_upload_cut_off_midway_leaves_the_old_value(served: Served) -> None:
    served.backing.set("k", (b"old", {"m": 1}))
    meta = b'{"m": 2}'
    head = (
        b"PUT " + data_path("k", "value").encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 1000000\r\nX-Storekeeper-Metadata-Length: 8\r\n\r\n"
    )
    _cut_off(served, head, meta + b"n" * 1000)
    time.sleep(0.3)
    assert served.backing.to_bytes("k") == b"old"
    assert served.backing.get_metadata("k") == {"m": 1}


def test_chunked_uploads_including_empty_ones(served: Served) -> None:
    response, _ = request(served, "PUT", data_path("empty"), body=iter([]), encode_chunked=True)
    assert response.status == 204 and served.backing.to_bytes("empty") == b""
    chunks = [b"ab", b"", b"cd" * 5000]
    response, _ = request(served, "PUT", data_path("some"), body=iter(chunks), encode_chunked=True)
    assert response.status == 204 and served.backing.to_bytes("some") == b"ab" + b"cd" * 5000


def test_upload_over_the_limit_is_413_and_changes_nothing() -> None:
    store = DictMemoryStore()
    store.connect()
    store.set("k", (b"old", {}))
    with served_in_thread(store, max_upload=1000) as limited:
        response, body = request(limited, "PUT", data_path("k"), body=b"x" * 5000)
        assert response.status == 413, body
        response, _ = request(limited, "PUT", data_path("k"), body=b"y" * 1000)
        assert response.status == 204
    assert store.to_bytes("k") == b"y" * 1000


def test_read_only_server_refuses_writes() -> None:
    store = DictMemoryStore()
    store.connect()
    store.set("k", (b"old", {}))
    version = store.get("k").version
    write = b"".join(encode_batch([({"op": "set_data", "key": "k"}, b"new")]))
    with served_in_thread(store, read_only=True) as limited:
        for method, path, body in [
            ("PUT", data_path("k"), b"new"),
            ("DELETE", "/store/k", None),
            ("POST", "/batch", write),
        ]:
            response, _ = request(limited, method, path, body=body)
            assert response.status == 405
        response, data = request(limited, "GET", data_path("k"))
        assert data == b"old"
        # a batch of checks only writes nothing: a read-only server answers it
        for condition, status in [({"if_version": version}, 200), ({"if_exists": False}, 412)]:
            check = b"".join(encode_batch([({"op": "check", "key": "k", **condition}, None)]))
            response, body = request(limited, "POST", "/batch", body=check)
            assert response.status == status, body


# -- keys and bodies --------------------------------------------------------------------------
def test_hostile_keys_round_trip_through_paths(served: Served) -> None:
    for index, key in enumerate([*WEIRD_KEYS, "a+b", "a/b/data", "q?x=1#f", "a//b", "%"]):
        response, body = request(served, "PUT", data_path(key), body=str(index).encode())
        assert response.status == 204, (key, body)
        assert served.backing.to_bytes(key) == str(index).encode(), key
        response, body = request(served, "GET", data_path(key))
        assert body == str(index).encode(), key
    response, _ = request(served, "PUT", "/store/x+y/data", body=b"plus")
    assert served.backing.to_bytes("x+y") == b"plus"  # '+' is a plus, not a space
    response, _ = request(served, "PUT", "/store/x%2Fy/data", body=b"slash")
    assert served.backing.to_bytes("x/y") == b"slash"
    response, _ = request(served, "PUT", "/store/%2541/data", body=b"once")
    assert served.backing.to_bytes("%41") == b"once"  # decoded exactly once


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/store/%FF%FE/data", 400, "InvalidKeyError"),
        ("/store/a%00b/data", 400, "InvalidKeyError"),
        ("/store//data", 400, "InvalidKeyError"),
        ("/store/k/colour", 404, "NotFound"),
        ("/store/k", 404, "NotFound"),
    ],
)
def test_bad_paths_are_clear_4xx(served: Served, path: str, status: int, error: str) -> None:
    response, body = request(served, "PUT", path, body=b"x")
    assert response.status == status
    assert json.loads(body)["error"] == error
    assert served.backing.query_keys() == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_bad_metadata_is_400_and_changes_nothing(served: Served, body: bytes) -> None:
    served.backing.set("k", (b"x", {"m": 1}))
    for method in ("PUT", "POST"):
        response, answer = request(served, method, data_path("k", "metadata"), body=body)
        assert response.status == 400, answer
    assert served.backing.get_metadata("k") == {"m": 1}


def test_metadata_without_content_type_and_update(served: Served) -> None:
    served.backing.set("k", (b"x", {"a": 1}))
    response, _ = request(served, "POST", data_path("k", "metadata"), body=b'{"b": 2}')
    assert response.status == 204
    response, body = request(served, "GET", data_path("k", "metadata"))
    assert json.loads(body) == {"a": 1, "b": 2}
    response, _ = request(served, "PUT", data_path("k", "metadata"), body=b'{"c": 3}')
    assert served.backing.get_metadata("k") == {"c": 3}
    assert served.backing.to_bytes("k") == b"x"


def test_query_answers_keys_one_per_line(served: Served) -> None:
    served.backing.set("é/1", (b"", {"kind": "photo", "n": 1}))
    served.backing.set("b", (b"", {"kind": "photo", "n": 2}))
    served.backing.set("c", (b"", {"kind": "text"}))
    fields = urlencode({"kind": json.dumps("photo")})  # what the encore client sends
    response, body = request(served, "GET", "/query?" + fields)
    assert response.status == 200
    assert body.endswith(b"\n") and sorted(body.decode().splitlines()) == ["b", "é/1"]
    response, body = request(served, "GET", "/query?" + urlencode({"kind": json.dumps("none")}))
    assert body == b""
    response, body = request(served, "GET", "/query?kind=%7Bnot")
    assert response.status == 400


def test_list_streams_a_json_array_or_json_lines(served: Served) -> None:
    for key in ["a/1", "a/2", "a/b/3", "b"]:
        served.backing.set(key, (b"", {}))
    response, body = request(served, "GET", "/list?prefix=a/&delimiter=/")
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body) == ["a/1", "a/2", "a/b/"]
    assert json.loads(request(served, "GET", "/list?prefix=zz")[1]) == []
    lines = {"Accept": "application/x-ndjson"}
    response, body = request(served, "GET", "/list?prefix=a/&delimiter=/", headers=lines)
    assert (response.getheader("Content-Type") or "").startswith("application/x-ndjson")
    assert [json.loads(line) for line in body.splitlines()] == ["a/1", "a/2", "a/b/"]


# -- many clients and abandoned downloads -------------------------------------------------------
def test_fifty_concurrent_clients(served: Served) -> None:
    barrier = threading.Barrier(50)
    failures: list[object] = []

    def client(index: int) -> None:
        try:
            barrier.wait(30)
            key = f"c/{index}"
            response, _ = request(served, "PUT", data_path(key), body=str(index).encode() * 1000)
            assert response.status == 204
            response, body = request(served, "GET", data_path(key))
            assert response.status == 200 and body == str(index).encode() * 1000
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert len(served.backing.query_keys()) == 50


def test_abandoned_downloads_do_not_disturb_the_server(served: Served) -> None:
    served.backing.set("big", (b"z" * (8 * 1024 * 1024), {}))
    for _ in range(20):
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        connection.request("GET", data_path("big"))
        response = connection.getresponse()
        assert response.read(1024) == b"z" * 1024
        connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        connection.close()
    response, body = request(served, "GET", data_path("big"))
    assert response.status == 200 and len(body) == 8 * 1024 * 1024


def test_encore_client_flow(served: Served) -> None:
    """What encore's DynamicURLStore sends for set/get/exists/delete, by hand."""
    path = data_path("doc")
    response, _ = request(served, "HEAD", path)
    assert response.status == 404  # exists() -> False
    response, _ = request(served, "PUT", path, body=iter([b"abc"]), encode_chunked=True)
    assert response.status == 204
    response, _ = request(served, "PUT", data_path("doc", "metadata"), body=b'{"t": "x"}')
    assert response.status == 204
    response, _ = request(served, "HEAD", path)
    assert response.status == 200 and response.getheader("Content-Length") == "3"
    response, body = request(served, "GET", path, headers={"Accept-Encoding": ""})
    assert body == b"abc"
    response, body = request(served, "GET", path, headers={"Range": "bytes=0-1"})
    assert body == b"ab"  # inclusive end, as HTTP means it
    response, _ = request(served, "DELETE", "/store/doc")
    assert response.status == 204 and not served.backing.exists("doc")


# -- batches -----------------------------------------------------------------------------------
def test_a_batch_is_applied_in_one_transaction(served: Served) -> None:
    served.backing.set("taken", (b"old", {}))
    writes: list[tuple[dict[str, Any], bytes | None]] = [
        ({"op": "set", "key": "a", "metadata": {"n": 1}}, b"A"),
        ({"op": "set_data", "key": "taken"}, b"new"),
        ({"op": "set", "key": "taken", "metadata": {}, "if_exists": False}, b"x"),
    ]
    response, body = request(served, "POST", "/batch", body=b"".join(encode_batch(writes)))
    assert response.status == 412, body
    assert not served.backing.exists("a")  # the whole batch rolled back
    assert served.backing.to_bytes("taken") == b"old"
    writes[2] = ({"op": "update_metadata", "key": "taken", "metadata": {"u": 1}}, None)
    writes.append(({"op": "delete", "key": "a"}, None))
    writes.append(({"op": "set", "key": "b", "metadata": {}}, b""))
    response, body = request(served, "POST", "/batch", body=b"".join(encode_batch(writes)))
    assert response.status == 200, body
    versions = json.loads(body)
    assert versions[1:4] == [None, None, None]
    assert versions[0] is not None and versions[4] == served.backing.get("b").version
    assert served.backing.to_bytes("taken") == b"new"
    assert served.backing.get_metadata("taken") == {"u": 1}
    assert not served.backing.exists("a")


@pytest.mark.parametrize(
    "body",
    [
        b'{"op": "set", "key": "a", "metadata": {}, "size": 10}\nshort',
        b"not json\n",
        b'{"op": "x"}',
    ],
)
def test_a_malformed_batch_is_400_and_applies_nothing(served: Served, body: bytes) -> None:
    good = b"".join(encode_batch([({"op": "set", "key": "first", "metadata": {}}, b"1")]))
    response, answer = request(served, "POST", "/batch", body=good + body)
    assert response.status == 400, answer
    assert served.backing.query_keys() == []


def test_a_batch_check_fails_the_batch_unless_the_key_is_as_read(served: Served) -> None:
    version = served.backing.set("read", (b"r", {}))
    write = ({"op": "set", "key": "w", "metadata": {}}, b"w")
    stale: list[tuple[dict[str, Any], bytes | None]] = [
        ({"op": "check", "key": "read", "if_version": "stale"}, None),
        write,
    ]
    created: list[tuple[dict[str, Any], bytes | None]] = [
        ({"op": "check", "key": "read", "if_exists": False}, None),
        write,
    ]
    for writes in (stale, created):
        response, body = request(served, "POST", "/batch", body=b"".join(encode_batch(writes)))
        assert response.status == 412, body
        assert not served.backing.exists("w")
    writes = [({"op": "check", "key": "read", "if_version": version}, None), write]
    writes.append(({"op": "check", "key": "never", "if_exists": False}, None))
    response, body = request(served, "POST", "/batch", body=b"".join(encode_batch(writes)))
    assert response.status == 200, body
    assert json.loads(body)[0] is None and served.backing.to_bytes("w") == b"w"
    bare = b"".join(encode_batch([({"op": "check", "key": "read"}, None)]))
    response, _ = request(served, "POST", "/batch", body=bare)
    assert response.status == 400  # a check names the version it expects


@pytest.mark.parametrize(
    "entry",
    [
        b'{"op": "check", "key": "read", "if_exists": true, "size": 2}\nxx',
        b'{"op": "check", "key": "read", "if_exists": true, "metadata": {}}\n',
        b'{"op": "check", "key": "read", "if_exists": true, "extra": 1}\n',
        b'{"op": "check", "key": "read", "if_version": ""}\n',
        b'{"op": "check", "key": "read", "if_exists": "yes"}\n',
        b'{"op": "set_metadata", "key": "read", "metadata": {}, "size": 1}\nx',
        b'{"op": "update_metadata", "key": "read", "metadata": {}, "if_exists": true}\n',
        b'{"op": "delete", "key": "read", "size": 0}\n',
        b'{"op": "delete", "key": "read", "if_exists": true}\n',
        b'{"op": "set", "key": "read", "metadata": {}}\n',
        b'{"op": "set", "key": "read", "size": 1}\nx',
        b'{"op": "set_data", "key": "read"}\n',
        b'{"op": "set_metadata", "key": "read", "metadata": []}\n',
    ],
)
def test_a_batch_entry_with_fields_its_op_does_not_take_is_400(
    served: Served, entry: bytes
) -> None:
    # data follows set and set_data only; every other field is one the op takes
    version = served.backing.set("read", (b"r", {}))
    write = b"".join(encode_batch([({"op": "set", "key": "w", "metadata": {}}, b"w")]))
    for body in (entry + write, write + entry):
        response, answer = request(served, "POST", "/batch", body=body)
        assert response.status == 400, (body, answer)
        assert json.loads(answer)["error"] == "InvalidArgumentError"
        assert not served.backing.exists("w")
        assert served.backing.get("read").version == version


def test_a_batch_check_with_if_exists_true_wants_the_key_at_any_version(
    served: Served,
) -> None:
    served.backing.set("read", (b"r", {}))
    for key, status in [("missing", 412), ("read", 200)]:
        check = ({"op": "check", "key": key, "if_exists": True}, None)
        write = ({"op": "set", "key": "w", "metadata": {}}, b"w")
        response, body = request(
            served, "POST", "/batch", body=b"".join(encode_batch([check, write]))
        )
        assert response.status == status, body
        assert served.backing.exists("w") is (status == 200)


def test_metadata_get_and_head_take_select(served: Served) -> None:
    served.backing.set("k", (b"x", {"a": 1, "b": 2}))
    for query, expected in [
        ("?select=a", {"a": 1}),
        ("?select=a&select=zz", {"a": 1}),
        ("?select=", {}),
        ("", {"a": 1, "b": 2}),
    ]:
        got, body = request(served, "GET", data_path("k", "metadata") + query)
        assert got.status == 200 and json.loads(body) == expected, query
        head, empty = request(served, "HEAD", data_path("k", "metadata") + query)
        assert head.status == 200 and empty == b""
        assert head.getheader("Content-Length") == str(len(body))
        assert head.getheader("ETag") == got.getheader("ETag") is not None
    tag = got.getheader("ETag") or ""
    head, _ = request(served, "HEAD", data_path("k", "metadata"), headers={"If-None-Match": tag})
    assert head.status == 304 and head.getheader("ETag") == tag
    head, _ = request(served, "HEAD", data_path("missing", "metadata"))
    assert head.status == 404


def test_info_tells_that_batches_take_checks(served: Served) -> None:
    _, body = request(served, "GET", "/info")
    assert json.loads(body)["batch_checks"] is True
