"""storekeeper.server and DynamicURLStore, side by side with their peers in one run.

1. Small GET and PUT (100 B) through our server vs a bare Starlette/uvicorn handler
   making the same store call (target >= 0.8), both loaded by wrk.
2. A 1 GiB download from our server (FileSystemStore) vs nginx serving the same bytes
   as a static file, fetched by curl (target >= 0.7).
3. A 1 GiB upload to our server, with the server's peak RSS (target < 64 MiB).
4. DynamicURLStore vs raw urllib3 sending the same requests: get, set, to_bytes and
   set_data of 100 B (target >= 0.9).
5. Our server's throughput and p99 latency at 1, 8 and 64 concurrent clients (wrk).

Each server runs in a process of its own; reps interleave the peers, and ratios are
the median of per-rep ratios. BENCH_REPS (default 3), BENCH_LARGE_MIB (default 1024),
BENCH_SECONDS (wrk duration, default 3), BENCH_ONLY (comma-separated sections: small,
large, client, concurrency). Needs nginx, wrk and curl (Debian packages).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPS = int(os.environ.get("BENCH_REPS", "3"))
LARGE = int(os.environ.get("BENCH_LARGE_MIB", "1024")) * 1024 * 1024
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
SMALL = b"x" * 100


# -- the servers ----------------------------------------------------------------------------
def _serve(kind: str, url: str, port: int) -> None:
    """Run one server (in a subprocess of the benchmark)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from storekeeper.server import create_app
    from storekeeper.store import open_store

    store = open_store(url)
    if kind == "ours":
        app = create_app(store)
    else:

        async def item(request: Request) -> Response:
            key = request.path_params["key"]
            if request.method == "PUT":
                body = await request.body()
                await run_in_threadpool(store.set_data, key, body)
                return Response(status_code=204)
            data = await run_in_threadpool(store.to_bytes, key)
            return Response(data, media_type="application/octet-stream")

        app = Starlette(routes=[Route("/bare/{key:path}", item, methods=["GET", "PUT"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def server(kind: str, url: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = _free_port()
    command = [sys.executable, __file__, "--serve", kind, url, str(port)]
    process = subprocess.Popen(command)
    try:
        _wait(port)
        yield port, process
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def nginx(root: Path, work: Path) -> Iterator[int]:
    port = _free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""user root;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    )
    process = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    try:
        _wait(port)
        yield port
    finally:
        process.terminate()
        process.wait(30)


# -- load generators ------------------------------------------------------------------------
def wrk(url: str, connections: int, script: Path | None = None) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of wrk against *url*."""
    threads = min(2, connections)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{SECONDS}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    return rate, latency


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process *pid* has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl_download(url: str) -> float:
    """Seconds curl takes to download *url* (to /dev/null)."""
    start = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - start


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_ratio(ours: list[float], peer: list[float]) -> str:
    ratios = [a / b for a, b in zip(ours, peer, strict=True)]
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f} .. {max(ratios):.2f}]"


# -- the sections ----------------------------------------------------------------------------
def small_requests(work: Path) -> None:
    put = work / "put.lua"
    put.write_text('wrk.method = "PUT"\nwrk.body = string.rep("x", 100)\n')
    rates: dict[tuple[str, str], list[float]] = {}
    costs: dict[tuple[str, str], list[float]] = {}
    with (
        server("ours", "memory://") as (ours, ours_process),
        server("bare", "memory://") as (bare, bare_process),
    ):
        pids = {"ours": ours_process.pid, "bare": bare_process.pid}
        targets = {
            "ours": f"http://127.0.0.1:{ours}/store/k/data",
            "bare": f"http://127.0.0.1:{bare}/bare/k",
        }
        for url in targets.values():
            subprocess.run(
                ["curl", "-sf", "-X", "PUT", "--data-binary", "x" * 100, url], check=True
            )
        for rep in range(REPS):
            order = list(targets) if rep % 2 == 0 else list(reversed(targets))
            for op in ("GET", "PUT"):
                for peer in order:
                    before = cpu_seconds(pids[peer])
                    rate, _ = wrk(targets[peer], 8, put if op == "PUT" else None)
                    used = cpu_seconds(pids[peer]) - before
                    rates.setdefault((op, peer), []).append(rate)
                    # Requests per CPU second of the server: what sharing the machine
                    # disturbs least.
                    costs.setdefault((op, peer), []).append(rate * SECONDS / used)
    print("1. small requests (100 B), wrk -c 8, req/s median:")
    for op in ("GET", "PUT"):
        ours_rates, bare_rates = rates[(op, "ours")], rates[(op, "bare")]
        print(
            f"   {op}: ours {statistics.median(ours_rates):,.0f}  bare Starlette "
            f"{statistics.median(bare_rates):,.0f}  ratio {median_ratio(ours_rates, bare_rates)}"
            "  (target >= 0.8)"
        )
        ours_costs, bare_costs = costs[(op, "ours")], costs[(op, "bare")]
        print(
            f"   {op} per server CPU second: ours {statistics.median(ours_costs):,.0f}  bare "
            f"{statistics.median(bare_costs):,.0f}  ratio {median_ratio(ours_costs, bare_costs)}"
        )


def large_values(work: Path) -> None:
    from storekeeper.store import open_store

    root = work / "nginx-root"
    root.mkdir()
    blob = root / "blob.bin"
    with open(blob, "wb") as out:
        block = os.urandom(1 << 20)
        for _ in range(LARGE // len(block)):
            out.write(block)
    store_dir = work / "fs-store"
    url = f"file://{store_dir}?create=true"
    with open_store(url) as store, open(blob, "rb") as source:
        store.set_data("blob", source)
    ours_times, nginx_times = [], []
    with server("ours", f"file://{store_dir}") as (port, _), nginx(root, work) as nginx_port:
        for rep in range(REPS):
            pair = [
                (ours_times, f"http://127.0.0.1:{port}/store/blob/data"),
                (nginx_times, f"http://127.0.0.1:{nginx_port}/blob.bin"),
            ]
            for times, target in pair if rep % 2 == 0 else reversed(pair):
                times.append(curl_download(target))
    mb = LARGE / 1e6
    ours_rates = [mb / t for t in ours_times]
    nginx_rates = [mb / t for t in nginx_times]
    print(f"2. {LARGE >> 20} MiB download by curl, MB/s median:")
    print(
        f"   ours {statistics.median(ours_rates):,.0f}  nginx {statistics.median(nginx_rates):,.0f}"
        f"  ratio {median_ratio(ours_rates, nginx_rates)}  (target >= 0.7)"
    )
    upload_rates, peaks = [], []
    for _rep in range(REPS):
        with server("ours", f"file://{store_dir}") as (port, process):
            start = time.perf_counter()
            subprocess.run(
                ["curl", "-sf", "-T", str(blob), f"http://127.0.0.1:{port}/store/up/data"],
                check=True,
            )
            upload_rates.append(mb / (time.perf_counter() - start))
            peaks.append(peak_rss_mib(process.pid))
    print(f"3. {LARGE >> 20} MiB upload by curl -T (Content-Length):")
    print(
        f"   ours {statistics.median(upload_rates):,.0f} MB/s  [{min(upload_rates):,.0f} .. "
        f"{max(upload_rates):,.0f}]; server peak RSS {statistics.median(peaks):.1f} MiB "
        f"[{min(peaks):.1f} .. {max(peaks):.1f}]  (target < 64 MiB)"
    )
    shutil.rmtree(store_dir)
    blob.unlink()


def client_overhead() -> None:
    import urllib3

    from storekeeper.backends.http import DynamicURLStore
    from storekeeper.backends.http_protocol import METADATA_LENGTH

    count = 2000
    metadata = {"a": 1}
    value_body = b'{"a":1}' + SMALL
    value_headers = {METADATA_LENGTH: "7"}
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    with server("ours", "memory://") as (port, _):
        base = f"http://127.0.0.1:{port}/store"
        pool = urllib3.PoolManager()
        with DynamicURLStore(base) as store:
            store.set("k", (SMALL, metadata))

            def ours_get() -> None:
                for _ in range(count):
                    with store.get("k").data as stream:
                        stream.read()

            def raw_get() -> None:
                for _ in range(count):
                    pool.request("GET", base + "/k/value").data  # noqa: B018

            def ours_set() -> None:
                for _ in range(count):
                    store.set("k", (SMALL, metadata))

            def raw_set() -> None:
                for _ in range(count):
                    pool.request("PUT", base + "/k/value", body=value_body, headers=value_headers)

            def ours_get_data() -> None:
                for _ in range(count):
                    store.to_bytes("k")

            def raw_get_data() -> None:
                for _ in range(count):
                    pool.request("GET", base + "/k/data").data  # noqa: B018

            def ours_put_data() -> None:
                for _ in range(count):
                    store.set_data("k", SMALL)

            def raw_put_data() -> None:
                for _ in range(count):
                    pool.request("PUT", base + "/k/data", body=SMALL)

            runs = {
                ("get", "ours"): ours_get,
                ("get", "raw"): raw_get,
                ("set", "ours"): ours_set,
                ("set", "raw"): raw_set,
                ("to_bytes", "ours"): ours_get_data,
                ("to_bytes", "raw"): raw_get_data,
                ("set_data", "ours"): ours_put_data,
                ("set_data", "raw"): raw_put_data,
            }
            for rep in range(REPS):
                items = list(runs.items()) if rep % 2 == 0 else list(reversed(runs.items()))
                for (op, peer), action in items:
                    start, cpu = time.perf_counter(), time.process_time()
                    action()
                    rates.setdefault((op, peer), []).append(count / (time.perf_counter() - start))
                    cpus.setdefault((op, peer), []).append(count / (time.process_time() - cpu))
    print("4. DynamicURLStore vs raw urllib3 (same requests), one client, ops/s median:")
    print("   get = GET {key}/value, set = PUT {key}/value, to_bytes/set_data = {key}/data")
    for op in ("get", "set", "to_bytes", "set_data"):
        ours, raw = rates[(op, "ours")], rates[(op, "raw")]
        print(
            f"   {op}: DynamicURLStore {statistics.median(ours):,.0f}  urllib3 "
            f"{statistics.median(raw):,.0f}  ratio {median_ratio(ours, raw)}  (target >= 0.9)"
        )
        ours_cpu, raw_cpu = cpus[(op, "ours")], cpus[(op, "raw")]
        print(
            f"   {op} per client CPU second: DynamicURLStore {statistics.median(ours_cpu):,.0f}"
            f"  urllib3 {statistics.median(raw_cpu):,.0f}  ratio {median_ratio(ours_cpu, raw_cpu)}"
        )


def concurrency() -> None:
    print("5. our server, 100 B GET, wrk: req/s and p99 latency by concurrent clients:")
    with server("ours", "memory://") as (port, _):
        url = f"http://127.0.0.1:{port}/store/k/data"
        subprocess.run(["curl", "-sf", "-X", "PUT", "--data-binary", "x" * 100, url], check=True)
        for clients in (1, 8, 64):
            runs = [wrk(url, clients) for _ in range(REPS)]
            rate = statistics.median(r for r, _ in runs)
            p99 = statistics.median(p for _, p in runs)
            print(f"   {clients:>2} clients: {rate:,.0f} req/s, p99 {p99:.1f} ms")


def main() -> None:
    for tool in ("wrk", "nginx", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk curl")
    print(f"benchmarks/server.py: {REPS} reps, wrk {SECONDS}s runs, large value {LARGE >> 20} MiB")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        sections = {
            "small": lambda: small_requests(work),
            "large": lambda: large_values(work),
            "client": client_overhead,
            "concurrency": concurrency,
        }
        chosen = os.environ.get("BENCH_ONLY", ",".join(sections)).split(",")
        for name in chosen:
            sections[name]()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
