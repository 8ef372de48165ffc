"""`isthmus bench registry`: how the registry holds up at 100,000 endpoints.

Loads 10 clusters × 1,000 services × 10 endpoints (`--scale full`; `small` is 2 × 50 × 10)
into a fresh backend (sqlite in a temp dir, or a throwaway single-member etcd from
`registry.etcd_process`), one registration transaction per service. Then a separate
watcher process (as a gateway or control plane would be) follows every cluster's catalog
with `Store.watch_catalog`; reported: the load time, the time until that fresh watcher
holds the full catalog (goal ≤ 2 s), the resident memory the catalog adds to that process
(goal ≤ 200 MB), and the change-to-watcher latency p50/p99 at 100 changes/s (goal p99
≤ 150 ms on sqlite, ≤ 100 ms on etcd). Each change re-registers one endpoint with its
wall-clock write time in a label, so the watcher measures latency without coordination.

The hold time is taken in `--watchers` fresh processes (the last one also measures change
latency) and judged on their median. Each reports where its time went: its own CPU, the
time its trio thread was ready to run but both cores were busy with other processes
(run-queue wait, from /proc/self/task/<pid>/schedstat), the CPU etcd spent meanwhile (psutil on the etcd pid),
and, for etcd, how many range pages were read over gRPC and through the JSON gateway. With
etcd and more than one watcher, one more fresh watcher reads through the JSON gateway only,
so the two roads are compared on the same data under the same load.
Modules are imported before the clock starts (their import time is reported apart): the
figure is the time to read and build the catalog, not Python's start-up.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import shutil
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import trio

from federation.bench._machine import write_results

HELP = "load 100,000 endpoints into a registry backend; time a fresh watcher, its memory, change latency"

SCALES = {"small": (2, 50, 10), "full": (10, 1000, 10)}
GOALS = {"hold_s": 2.0, "catalog_rss_mb": 200.0, "p99_ms": {"sqlite": 150.0, "etcd": 100.0}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("sqlite", "etcd"), default="sqlite", help="backend to measure (default: sqlite)")
    parser.add_argument(
        "--scale", choices=tuple(SCALES), default="full", help="full: 10×1000×10 = 100,000 endpoints; small: 2×50×10 (default: full)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second for the latency run (default: 100)")
    parser.add_argument("--changes", type=int, default=1000, help="changes in the latency run (default: 1000)")
    parser.add_argument(
        "--watchers", type=int, default=3, help="fresh watcher processes timed holding the catalog; the median is judged (default: 3)"
    )


# -- the synthetic catalog ------------------------------------------------------------------------


def cluster_name(c: int) -> str:
    return f"bench-{c}"


def plan(scale: str) -> dict[str, int]:
    clusters, services, endpoints = SCALES[scale]
    return {"clusters": clusters, "services": services, "endpoints": endpoints}


def make_cluster(c: int) -> Any:
    from registry.model import Cluster

    return Cluster(cluster_name(c), f"region-{c}", (f"zone-{c}a", f"zone-{c}b"))


def make_registration(c: int, s: int, per_service: int, labels: dict[str, str] | None = None, only: int | None = None) -> tuple[Any, list[Any]]:
    from registry.model import Endpoint, Locality, Service

    service = Service(f"svc-{s}", "bench", protocol="http", ports=tuple(range(8000, 8000 + per_service)))
    endpoints = [
        Endpoint(
            service.key,
            cluster_name(c),
            f"127.{10 + c}.{s // 256}.{s % 256}",
            8000 + e,
            Locality(f"region-{c}", f"zone-{c}{'ab'[e % 2]}"),
            labels=labels or {},
        )
        for e in range(per_service)
        if only is None or e == only
    ]
    return service, endpoints


def change_target(i: int, shape: dict[str, int]) -> tuple[int, int]:
    """Change number `i` touches endpoint 0 of (cluster, service): round-robin over clusters."""
    return i % shape["clusters"], (i // shape["clusters"]) % shape["services"]


# -- the watcher process -------------------------------------------------------------------------


def watcher_main() -> None:
    """Entry of the watcher subprocess: `python -c '...watcher_main()' CONFIG_JSON`; prints JSON lines."""
    trio.run(_watcher, json.loads(sys.argv[1]))


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds ready but waiting for one) of this process's main thread (trio's); zeros off Linux."""
    import os

    try:
        fields = Path(f"/proc/self/task/{os.getpid()}/schedstat").read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def _cpu_s(processes: list[Any]) -> float:
    import psutil

    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _watcher(cfg: dict[str, Any]) -> None:
    import importlib

    import psutil

    imports_started = time.perf_counter()
    from registry.store import Store
    from registry.url import open_backend, parse_registry_url

    backend_module = {"etcd": "registry.etcd", "sqlite": "registry.sqlite", "consul": "registry.consul"}
    importlib.import_module(backend_module[parse_registry_url(cfg["url"]).scheme])
    import_s = time.perf_counter() - imports_started

    proc = psutil.Process()
    servers = [psutil.Process(pid) for pid in cfg.get("server_pids", ())]
    gc.collect()
    baseline = proc.memory_info().rss
    shape = cfg["shape"]
    pending: dict[str, collections.deque[tuple[int, str]]] = {cluster_name(c): collections.deque() for c in range(shape["clusters"])}
    for i in range(cfg["changes"]):
        c, s = change_target(i, shape)
        _, endpoints = make_registration(c, s, shape["endpoints"], only=0)
        pending[cluster_name(c)].append((i, endpoints[0].id))
    latencies: list[float] = []
    held: dict[str, Any] = {}
    ready, done = trio.Event(), trio.Event()
    sched_started, server_cpu_started = _schedstat(), _cpu_s(servers)
    started, cpu_started = time.perf_counter(), time.process_time()

    async def follow(store: Store, cluster: str) -> None:
        queue = pending[cluster]
        async with aclosing(store.watch_catalog(cluster)) as catalogs:
            async for catalog in catalogs:
                held[cluster] = catalog
                if len(held) == len(pending):
                    ready.set()
                while queue:
                    seq, ident = queue[0]
                    endpoint = catalog.endpoints.get(ident)
                    labels = endpoint.label_map if endpoint is not None else {}
                    if labels.get("bench-seq") != str(seq):
                        break
                    latencies.append(time.time() - float(labels["bench-t"]))
                    queue.popleft()
                if not any(pending.values()):
                    done.set()

    async with open_backend(cfg["url"]) as backend:
        if cfg.get("gateway_reads"):
            backend.grpc_reads = False  # the comparison run: etcd's JSON gateway only
        store = Store(backend)
        async with trio.open_nursery() as nursery:
            for cluster in pending:
                nursery.start_soon(follow, store, cluster)
            await ready.wait()
            hold_s = time.perf_counter() - started
            hold_cpu_s = time.process_time() - cpu_started
            sched = _schedstat()
            server_cpu_s = _cpu_s(servers) - server_cpu_started
            gc.collect()
            rss = proc.memory_info().rss
            endpoints = sum(len(catalog.endpoints) for catalog in held.values())
            report = {
                "hold_s": hold_s,
                "hold_cpu_s": hold_cpu_s,
                "runqueue_wait_s": sched[1] - sched_started[1],
                "server_cpu_s": server_cpu_s if servers else None,
                "import_s": import_s,
                "range_pages": dict(getattr(backend, "range_reads", {})) or None,
                "rss_mb": rss / 2**20,
                "catalog_rss_mb": (rss - baseline) / 2**20,
                "endpoints": endpoints,
            }
            print(json.dumps(report), flush=True)
            if cfg["changes"]:
                with trio.move_on_after(cfg["timeout_s"]):
                    await done.wait()
            print(json.dumps({"latencies_ms": [round(x * 1000, 3) for x in latencies]}), flush=True)
            nursery.cancel_scope.cancel()


# -- the run --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class _Lines:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("the watcher process exited early")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


async def _load(store: Any, shape: dict[str, int], workers: int, progress: Any, task: Any) -> float:
    send, receive = trio.open_memory_channel[tuple[int, int]](workers * 2)
    started = trio.current_time()

    async def worker(jobs: Any) -> None:
        async with jobs:
            async for c, s in jobs:
                service, endpoints = make_registration(c, s, shape["endpoints"])
                await store.register_endpoints(service, endpoints, check_cluster_ids=False)
                progress.advance(task, len(endpoints))

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker, receive.clone())
        await receive.aclose()
        async with send:
            for c in range(shape["clusters"]):
                for s in range(shape["services"]):
                    await send.send((c, s))
    return trio.current_time() - started


async def _changes(store: Any, shape: dict[str, int], count: int, rate: float) -> float:
    started = trio.current_time()
    for i in range(count):
        await trio.sleep_until(started + i / rate)
        c, s = change_target(i, shape)
        service, endpoints = make_registration(c, s, shape["endpoints"], labels={"bench-seq": str(i), "bench-t": repr(time.time())}, only=0)
        await store.register_endpoints(service, endpoints, replace=True, check_cluster_ids=False)
    return trio.current_time() - started


async def _open_watcher(cfg: dict[str, Any]) -> Any:
    code = "from federation.bench.registry import watcher_main; watcher_main()"
    return await trio.lowlevel.open_process([sys.executable, "-c", code, json.dumps(cfg)], stdout=-1)


def _hold_summary(holds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median watcher's figures (by hold time), and every run's hold time."""
    ordered = sorted(holds, key=lambda h: h["hold_s"])
    median = ordered[(len(ordered) - 1) // 2]

    def r3(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "watcher_hold_s": r3(median["hold_s"]),
        "watcher_hold_cpu_s": r3(median["hold_cpu_s"]),
        "watcher_runqueue_wait_s": r3(median["runqueue_wait_s"]),
        # what the hold would have been had no other process wanted the cores (an estimate: the verdict uses the wall time)
        "watcher_hold_less_runqueue_wait_s": r3(median["hold_s"] - median["runqueue_wait_s"]),
        "server_cpu_during_hold_s": r3(median["server_cpu_s"]),
        "watcher_import_s": r3(median["import_s"]),
        "watcher_range_pages": median["range_pages"],
        "watcher_hold_runs_s": [r3(h["hold_s"]) for h in holds],
        "watcher_hold_cpu_runs_s": [r3(h["hold_cpu_s"]) for h in holds],
        "server_cpu_runs_s": [r3(h["server_cpu_s"]) for h in holds],
    }


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import os
    from contextlib import AsyncExitStack

    from rich.progress import Progress

    from registry.store import Store
    from registry.url import open_backend

    load_average = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: say how busy it was
    shape = plan(args.scale)
    total = shape["clusters"] * shape["services"] * shape["endpoints"]
    server_pids: list[int] = []
    async with AsyncExitStack() as stack:
        if args.backend == "etcd":
            from registry.etcd_process import open_etcd

            etcd = await stack.enter_async_context(open_etcd(workdir / "etcd", members=1))
            url, workers = etcd.registry_url, 8
            server_pids = [m.pid for m in etcd.members if m.pid is not None]
        else:
            url, workers = f"sqlite:///{workdir / 'registry.db'}", 1
        backend = await stack.enter_async_context(open_backend(url))
        store = Store(backend)
        for c in range(shape["clusters"]):
            await store.add_cluster(make_cluster(c))
        with Progress(transient=True) as progress:
            task = progress.add_task(f"loading {total:,} endpoints into {args.backend}", total=total)
            load_s = await _load(store, shape, workers, progress, task)
        cfg = {"url": url, "shape": shape, "changes": 0, "timeout_s": 30, "server_pids": server_pids}
        holds = []
        for _ in range(args.watchers - 1):  # hold-only watchers: a fresh process each
            process = await _open_watcher(cfg)
            try:
                lines = _Lines(process.stdout)
                with trio.fail_after(300):
                    holds.append(await lines.next())
                    await lines.next()
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
        cfg = {**cfg, "changes": args.changes, "timeout_s": args.changes / args.rate + 30}
        process = await _open_watcher(cfg)
        try:
            lines = _Lines(process.stdout)
            with trio.fail_after(300):
                held = await lines.next()
            holds.append(held)
            change_s = await _changes(store, shape, args.changes, args.rate)
            with trio.fail_after(cfg["timeout_s"] + 30):
                latencies = (await lines.next())["latencies_ms"]
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
        gateway_run = None
        if args.backend == "etcd" and args.watchers > 1:
            process = await _open_watcher({**cfg, "changes": 0, "timeout_s": 30, "gateway_reads": True})
            try:
                lines = _Lines(process.stdout)
                with trio.fail_after(300):
                    gateway_run = await lines.next()
                    await lines.next()
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
        status = await backend.status()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    summary = _hold_summary(holds)
    goal_p99 = GOALS["p99_ms"][args.backend]
    return {
        "benchmark": "registry",
        "backend": args.backend,
        "scale": args.scale,
        "clusters": shape["clusters"],
        "services_per_cluster": shape["services"],
        "endpoints_per_service": shape["endpoints"],
        "endpoints": total,
        "load_s": round(load_s, 3),
        "load_endpoints_per_s": round(total / load_s),
        "watcher_endpoints_held": held["endpoints"],
        **summary,
        # one more fresh watcher reading through etcd's JSON gateway only, for comparison
        "gateway_reads_only": None
        if gateway_run is None
        else {
            "watcher_hold_s": round(gateway_run["hold_s"], 3),
            "watcher_hold_cpu_s": round(gateway_run["hold_cpu_s"], 3),
            "watcher_runqueue_wait_s": round(gateway_run["runqueue_wait_s"], 3),
            "server_cpu_during_hold_s": round(gateway_run["server_cpu_s"], 3),
            "watcher_range_pages": gateway_run["range_pages"],
        },
        "watcher_rss_mb": round(held["rss_mb"], 1),
        "catalog_rss_mb": round(held["catalog_rss_mb"], 1),
        "changes_sent": args.changes,
        "changes_seen": len(latencies),
        "change_rate_per_s": round(args.changes / change_s, 1) if change_s else None,
        "latency_ms": {
            "p50": p50,
            "p90": percentile(latencies, 90),
            "p99": p99,
            "max": max(latencies) if latencies else None,
        },
        "final_revision": status.revision,
        "load_average_at_start": load_average,
        "goals": {"watcher_hold_s": GOALS["hold_s"], "catalog_rss_mb": GOALS["catalog_rss_mb"], "latency_p99_ms": goal_p99},
        "met": {
            "watcher_hold_s": summary["watcher_hold_s"] <= GOALS["hold_s"] and held["endpoints"] == total,
            "catalog_rss_mb": held["catalog_rss_mb"] <= GOALS["catalog_rss_mb"],
            "latency_p99_ms": p99 is not None and p99 <= goal_p99 and len(latencies) == args.changes,
        },
    }


def _breakdown(result: dict[str, Any], *, hold: bool = False) -> str:
    parts = [f"hold {result['watcher_hold_s']:.2f} s"] if hold else []
    parts += [f"watcher CPU {result['watcher_hold_cpu_s']:.2f} s", f"waiting for a busy core {result['watcher_runqueue_wait_s']:.2f} s"]
    if result["server_cpu_during_hold_s"] is not None:
        parts.append(f"{result['backend']} CPU {result['server_cpu_during_hold_s']:.2f} s")
    pages = result["watcher_range_pages"]
    if pages:
        parts.append("range pages " + ", ".join(f"{k} {v}" for k, v in pages.items()))
    if not hold:
        parts.append(f"hold less that wait {result['watcher_hold_less_runqueue_wait_s']:.2f} s")
        parts.append(f"imports {result['watcher_import_s']:.2f} s, before the clock")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    from federation.commands._common import print_table
    from federation.errors import UsageError

    if args.rate <= 0 or args.changes < 0:
        raise UsageError(f"--rate {args.rate} / --changes {args.changes}: need a positive rate and a non-negative count")
    if not 1 <= args.watchers <= 20:
        raise UsageError(f"--watchers {args.watchers}: need 1-20 watcher runs")
    workdir = Path(tempfile.mkdtemp(prefix="isthmus-bench-registry-"))
    try:
        result = trio.run(_run, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = write_results(args.out, result)
    lat = result["latency_ms"]
    goals, met = result["goals"], result["met"]

    def mark(ok: bool) -> str:
        return "yes" if ok else "NO"

    print_table(
        f"registry bench: {result['backend']}, {result['endpoints']:,} endpoints",
        ["measure", "value", "goal", "met"],
        [
            ["load", f"{result['load_s']:.1f} s ({result['load_endpoints_per_s']:,} endpoints/s)", "", ""],
            [
                f"fresh watcher holds full catalog (median of {len(result['watcher_hold_runs_s'])})",
                f"{result['watcher_hold_s']:.2f} s (runs: {', '.join(f'{x:.2f}' for x in result['watcher_hold_runs_s'])})",
                f"≤ {goals['watcher_hold_s']} s",
                mark(met["watcher_hold_s"]),
            ],
            ["  where the time went", _breakdown(result), "", ""],
            *(
                [["  same, etcd's JSON gateway only (1 run)", _breakdown({**result, **result["gateway_reads_only"]}, hold=True), "", ""]]
                if result.get("gateway_reads_only")
                else []
            ),
            ["catalog resident memory", f"{result['catalog_rss_mb']:.0f} MB (process {result['watcher_rss_mb']:.0f} MB)", f"≤ {goals['catalog_rss_mb']:.0f} MB", mark(met["catalog_rss_mb"])],
            [f"change → watcher at {result['change_rate_per_s']}/s", f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms ({result['changes_seen']}/{result['changes_sent']} seen)", f"p99 ≤ {goals['latency_p99_ms']:.0f} ms", mark(met["latency_p99_ms"])],
        ],
    )
    print(f"wrote {path}")
    return 0
