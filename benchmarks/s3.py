"""S3Store side by side with raw boto3 making the same requests, against a moto server.

Phases (BENCH_REPS reps, peer order rotated each rep, median of per-rep ratios):

- 1 KiB put / get (BENCH_S3_SMALL keys, default 200): ``store.set`` / ``store.to_bytes``
  vs ``put_object`` / ``get_object().read()``;
- 64 MiB put / get (BENCH_S3_MIB, default 64): ``store.set`` from bytes / streamed read
  vs the same multipart upload (8 MiB parts) / a streamed ``get_object``;
- one 1 GiB value (BENCH_S3_LARGE_MIB, default 1024) streamed in and out, each phase in a
  fresh subprocess so its peak RSS is its own (target: under 64 MiB);
- a query over BENCH_S3_KEYS keys (default 10,000): requests and time of the store's
  index (cold, warm, a new store object) vs a naive list-and-HEAD scan.

The moto server runs in its own process; it is the bottleneck (a Python server that
parses every request and keeps objects in memory or temporary files), so these ratios
mostly measure client overhead per request. Target: >= 0.8 of raw on each transfer.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _harness import Results, env_int, rotate, timed

BUCKET = "bench"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
PART = 8 * 1024 * 1024
CHUNK = 1 << 20


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = _client(endpoint)
    for _ in range(300):
        try:
            client.create_bucket(Bucket=BUCKET)
            return process, endpoint
        except Exception:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto server did not start")


def _client(endpoint: str) -> Any:
    import boto3
    import botocore.config

    config = botocore.config.Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **CREDENTIALS
    )


def _store(endpoint: str, prefix: str) -> Any:
    from storekeeper.backends.s3 import S3Store

    store = S3Store(
        BUCKET, prefix, endpoint_url=endpoint, region="us-east-1", credentials=CREDENTIALS
    )
    store.connect()
    return store


def _source(total: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    left = total
    while left > 0:
        piece = block[: min(CHUNK, left)]
        left -= len(piece)
        yield piece


def _raw_multipart(client: Any, key: str, chunks: Iterator[bytes]) -> None:
    """The multipart upload the store makes: parts of PART bytes from a stream."""
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    held: list[bytes] = []
    size = 0

    def send(body: bytes) -> None:
        number = len(parts) + 1
        answer = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size >= PART:
            send(b"".join(held))
            held.clear()
            size = 0
    send(b"".join(held))
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def _drain(stream: Any) -> int:
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
    stream.close()
    return total


# -- small and 64 MiB values ------------------------------------------------------------------
def transfers(endpoint: str, reps: int) -> None:
    client = _client(endpoint)
    small = env_int("BENCH_S3_SMALL", 200)
    mib = env_int("BENCH_S3_MIB", 64)
    data = os.urandom(1024)
    big = os.urandom(mib * 1024 * 1024)
    results = Results()
    for rep in range(reps):
        store = _store(endpoint, f"r{rep}-{uuid.uuid4().hex[:6]}/")
        raw = f"raw{rep}-{uuid.uuid4().hex[:6]}/"
        for peer in rotate(["s3store", "boto3"], rep):
            if peer == "s3store":
                keys = [f"s{i}" for i in range(small)]
                results.add(
                    "put 1K", peer, small, timed(lambda: [store.set(k, (data, {})) for k in keys])
                )
                results.add("get 1K", peer, small, timed(lambda: [store.to_bytes(k) for k in keys]))
                results.add("put 64M", peer, mib, timed(lambda: store.set("big", (big, {}))))
                results.add("get 64M", peer, mib, timed(lambda: _drain(store.get_data("big"))))
            else:
                keys = [f"{raw}s{i}" for i in range(small)]
                results.add(
                    "put 1K",
                    peer,
                    small,
                    timed(
                        lambda: [client.put_object(Bucket=BUCKET, Key=k, Body=data) for k in keys]
                    ),
                )
                results.add(
                    "get 1K",
                    peer,
                    small,
                    timed(
                        lambda: [
                            client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys
                        ]
                    ),
                )
                results.add(
                    "put 64M",
                    peer,
                    mib,
                    timed(lambda: _raw_multipart(client, raw + "big", iter([big]))),
                )
                results.add(
                    "get 64M",
                    peer,
                    mib,
                    timed(
                        lambda: _drain(client.get_object(Bucket=BUCKET, Key=raw + "big")["Body"])
                    ),
                )
        store.disconnect()
    print(f"\n== transfers ({reps} reps; 1 KiB: ops/s, 64 MiB: MiB/s)")
    phases = ["put 1K", "get 1K", "put 64M", "get 64M"]
    results.print_table(phases, ["s3store", "boto3"])
    for phase in phases:
        results.print_ratio(f"{phase}: S3Store / raw boto3", phase, "s3store", "boto3", 0.8)


# -- one large value, a subprocess per phase ---------------------------------------------------
def _large_child(peer: str, phase: str, endpoint: str, key: str, size: int) -> None:
    store = _store(endpoint, "large/") if peer == "s3store" else None
    client = _client(endpoint) if store is None else None
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    if phase == "set":
        if store is not None:
            store.set(key, (_source(size), {}))
        else:
            _raw_multipart(client, key, _source(size))
    elif store is not None:
        assert _drain(store.get_data(key)) == size
    else:
        assert _drain(client.get_object(Bucket=BUCKET, Key=key)["Body"]) == size
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": _peak_rss_mib(), "baseline": baseline}))


def _peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec (ru_maxrss is
    kept across exec on Linux, so a child would report its parent's peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _large_run(peer: str, phase: str, endpoint: str, size: int) -> dict[str, float]:
    key = "big" if peer == "s3store" else "raw-big"
    child = subprocess.run(
        [sys.executable, __file__, "large-child", peer, phase, endpoint, key, str(size)],
        check=False,
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise SystemExit(f"{peer} {phase} failed:\n{child.stderr[-3000:]}")
    result: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def large(endpoint: str) -> None:
    """Each phase twice per peer, in both orders (the server's memory is slower to
    touch the first time, which would favour whoever runs second)."""
    mib = env_int("BENCH_S3_LARGE_MIB", 1024)
    size = mib * 1024 * 1024
    print(f"\n== one {mib} MiB value streamed (fresh subprocess per phase, both orders)")
    for phase in ("set", "get"):
        runs: dict[str, list[dict[str, float]]] = {"s3store": [], "boto3": []}
        for order in (["s3store", "boto3"], ["boto3", "s3store"]):
            for peer in order:
                runs[peer].append(_large_run(peer, phase, endpoint, size))
        for peer, got in runs.items():
            speeds = ", ".join(f"{mib / run['seconds']:.1f}" for run in got)
            peaks = ", ".join(f"{run['peak']:.0f}" for run in got)
            print(
                f"  {phase} {peer:<8} {speeds} MiB/s  peak RSS {peaks} MiB "
                f"(after imports {got[0]['baseline']:.0f} MiB)"
            )
        ratios = [
            theirs["seconds"] / ours["seconds"]
            for ours, theirs in zip(runs["s3store"], runs["boto3"], strict=True)
        ]
        shown = " / ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"  {phase}: S3Store / raw boto3 throughput {shown} (target >= 0.8)")


# -- queries ----------------------------------------------------------------------------------
def _counting(store_or_client: Any) -> list[str]:
    objects = getattr(store_or_client, "_objects", None)
    client = store_or_client if objects is None else objects.client
    seen: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: seen.append(model.name))
    return seen


def queries(endpoint: str) -> None:
    count = env_int("BENCH_S3_KEYS", 10_000)
    prefix = f"q-{uuid.uuid4().hex[:6]}/"
    writer = _store(endpoint, prefix)
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: writer.set(f"k{n:05d}", (b"", {"n": n % 100})), range(count)))
    print(f"\n== query over {count:,} keys (filled in {time.perf_counter() - start:.0f} s)")
    expected = count // 100

    def ours(store: Any) -> tuple[int, float, list[str]]:
        seen = _counting(store)
        found: list[str] = []
        seconds = timed(lambda: found.extend(store.query_keys(n=42)))
        assert len(found) == expected
        return len(seen), seconds, seen

    def naive() -> tuple[int, float]:
        client = _client(endpoint)
        seen = _counting(client)

        def scan() -> list[str]:
            found = []
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    if "\x01" in item["Key"]:
                        continue
                    head = client.head_object(Bucket=BUCKET, Key=item["Key"])
                    if json.loads(head["Metadata"]["sk-m"]).get("n") == 42:
                        found.append(item["Key"])
            return found

        seconds = timed(scan)
        return len(seen), seconds

    cold = _store(endpoint, prefix)
    seen = _counting(cold)
    cold_seconds = timed(lambda: cold.query_keys(n=42))
    rows = [("S3Store, new object, no snapshot yet", len(seen), cold_seconds)]
    warm_requests, warm_seconds, _ = ours(cold)
    rows.append(("S3Store, same object again", warm_requests, warm_seconds))
    fresh_requests, fresh_seconds, _ = ours(_store(endpoint, prefix))
    rows.append(("S3Store, new object (from the snapshot)", fresh_requests, fresh_seconds))
    naive_requests, naive_seconds = naive()
    rows.append(("naive list + HEAD of every key", naive_requests, naive_seconds))
    for label, requests, seconds in rows:
        print(f"  {label:<42} {requests:>6} requests {seconds:7.2f} s")
    print(f"  warm query time / naive scan time: {warm_seconds / naive_seconds:.3f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "large-child":
        _, _, peer, phase, endpoint, key, size = sys.argv
        _large_child(peer, phase, endpoint, key, int(size))
        return
    process, endpoint = _start_moto()
    try:
        print("S3Store vs raw boto3 on a moto server (shared 2-core machine: noisy)")
        transfers(endpoint, env_int("BENCH_REPS", 3))
        if env_int("BENCH_S3_LARGE_MIB", 1024) > 0:
            large(endpoint)
        queries(endpoint)
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
