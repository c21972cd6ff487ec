"""The S3 server the S3Store tests run against, and raw access to it.

By default a moto server (``moto[server]``) in a process of its own on a free loopback
port (its own process so that the server does not compete with the tests for one
interpreter lock). With ``STOREKEEPER_TEST_S3=s3://bucket/prefix?endpoint_url=...`` the
tests use that bucket instead, with credentials from the environment (the bucket must
exist and have versioning enabled). Without either, the tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from storekeeper.backends.s3 import S3Store
from storekeeper.events import EventManager
from storekeeper.testing import require_service

#: Parts this small make multipart uploads cheap in tests (moto's minimum is lowered).
TEST_PART_SIZE = 256 * 1024
TEST_INLINE_LIMIT = 64 * 1024
_FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class S3Server:
    """Where the tests' buckets are: endpoint, region, credentials, bucket names."""

    endpoint_url: str | None
    region: str
    credentials: dict[str, str] | None
    bucket: str
    plain_bucket: str | None  # unversioned; None when only one bucket is available
    root: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self) -> Any:
        """A raw boto3 client (not the store's): the second path to the data."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            **(self.credentials or {}),
        )

    def prefix(self) -> str:
        """A fresh prefix no other test uses."""
        return f"{self.root}t-{uuid.uuid4().hex[:12]}/"

    def store(self, prefix: str, *, bucket: str | None = None, **options: Any) -> S3Store:
        """An unconnected store on *prefix* with the test sizes."""
        settings: dict[str, Any] = {
            "part_size": TEST_PART_SIZE,
            "inline_limit": TEST_INLINE_LIMIT,
            **options,
        }
        return S3Store(
            bucket or self.bucket,
            prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            credentials=self.credentials,
            **settings,
        )

    def opener(self, prefix: str, **options: Any) -> functools.partial[S3Store]:
        """A picklable callable opening the store on *prefix* in any process."""
        return functools.partial(
            open_test_store,
            self.endpoint_url,
            self.region,
            self.credentials,
            self.bucket,
            prefix,
            options,
        )


def open_test_store(
    endpoint_url: str | None,
    region: str,
    credentials: dict[str, str] | None,
    bucket: str,
    prefix: str,
    options: dict[str, Any],
) -> S3Store:
    """An unconnected store as :meth:`S3Server.store` builds it (for other processes)."""
    settings = {"part_size": TEST_PART_SIZE, "inline_limit": TEST_INLINE_LIMIT, **options}
    return S3Store(
        bucket,
        prefix,
        endpoint_url=endpoint_url,
        region=region,
        credentials=credentials,
        event_manager=EventManager(),
        **settings,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_moto() -> S3Server:
    try:
        import moto.server  # noqa: F401 - only to know it is installed
    except ImportError as exc:
        require_service("s3", f"moto[server] is not installed ({exc})")
    for _ in range(5):
        port = _free_port()
        env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(64 * 1024)}
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        server = S3Server(
            f"http://127.0.0.1:{port}",
            "us-east-1",
            dict(_FAKE_CREDENTIALS),
            "storekeeper-test",
            "storekeeper-plain",
            process=process,
        )
        if _wait_until_up(server, process):
            return server
        process.kill()
        process.wait()
    require_service("s3", "the moto server did not start")
    raise AssertionError("require_service always raises")


def _wait_until_up(server: S3Server, process: subprocess.Popen[bytes]) -> bool:
    client = server.client()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # the port was taken meanwhile
        try:
            client.create_bucket(Bucket=server.bucket)
        except Exception:  # not listening yet
            time.sleep(0.1)
            continue
        client.put_bucket_versioning(
            Bucket=server.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        assert server.plain_bucket is not None
        client.create_bucket(Bucket=server.plain_bucket)
        return True
    return False


def _external(url: str) -> S3Server:
    parts = urlsplit(url)
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    return S3Server(
        options.get("endpoint_url"),
        options.get("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        None,
        parts.netloc,
        None,
        root=parts.path.lstrip("/"),
    )


def start() -> S3Server:
    """The server for this test session (see the module's docstring)."""
    url = os.environ.get("STOREKEEPER_TEST_S3")
    if url:
        return _external(url)
    return _start_moto()


def stop(server: S3Server) -> None:
    """Stop the moto process this session started (by its own handle)."""
    if server.process is not None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def raw_read(server: S3Server, store: S3Store, key: str) -> tuple[bytes, dict[str, Any]]:
    """*key*'s data and metadata read with a raw client, following the object layout."""
    import botocore.exceptions

    client = server.client()
    name = store.prefix + _encoded(key)
    try:
        response = client.get_object(Bucket=store.bucket, Key=name)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            raise KeyError(key) from exc
        raise
    fields = response["Metadata"]
    body = response["Body"].read()
    if "sk-m" in fields:
        metadata = json.loads(fields["sk-m"])
    else:
        sidecar = client.get_object(Bucket=store.bucket, Key=fields["sk-x"])
        metadata = json.loads(sidecar["Body"].read())
    return body[:-16], metadata


def raw_write(
    server: S3Server, store: S3Store, key: str, data: bytes, metadata: dict[str, Any]
) -> None:
    """Store *key* with a raw client, as another program following the layout would."""
    now = repr(time.time())
    tag = os.urandom(16)
    server.client().put_object(
        Bucket=store.bucket,
        Key=store.prefix + _encoded(key),
        Body=data + tag,
        Metadata={
            "sk-v": tag.hex(),
            "sk-c": now,
            "sk-t": now,
            "sk-m": json.dumps(metadata, ensure_ascii=True, separators=(",", ":")),
        },
    )


def _encoded(key: str) -> str:
    """The documented name encoding, written out independently of the store's code."""
    out = []
    for char in key:
        code = ord(char)
        if code == 0x7F:
            out.append("\x01\x40")
        elif code < 0x20:
            out.append("\x01" + chr(code + 0x20))
        else:
            out.append(char)
    return "".join(out)


_shared: S3Server | None = None


def shared() -> S3Server:
    """The session's server, started on first use and stopped when the session exits."""
    global _shared
    if _shared is None:
        import atexit

        _shared = start()
        atexit.register(stop, _shared)
    return _shared


def prefix_for(path: object) -> str:
    """The prefix of the store a test builds on *path* (the same one every time, so that
    ``reopen_store`` finds the data)."""
    import hashlib

    return f"{shared().root}p-{hashlib.sha1(str(path).encode()).hexdigest()[:16]}/"
