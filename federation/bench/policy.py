"""`isthmus bench policy`: what traffic policy costs per request, as pure functions with no I/O.

Route evaluation: a table of `--services` services with `--rules` rules each (a mix of exact
paths, prefixes, regular expressions and header-only rules, some with method, source-cluster and
header conditions, canary splits and faults), probed with requests that hit every kind of rule and
some that match none, spread evenly over every service (the table is as cold in the CPU caches
as it gets). Each request's view is built just before its evaluation, as the gateway builds it
from headers it has just parsed; only the evaluation is timed (`perf_counter_ns`, minus the cost of
the timer itself), so p50 and p99 are per request. Goal: p50 at most 5 us. Other work on the box
shows up as the load average written with the figures.

Access logging: the pure half of "CPU per request with access logging on versus off": the sampling
decision plus formatting one record as its JSON line, per request, in us.

Gateway CPU with access logging on versus off (second table; `--gateway-requests 0` skips it):
two real gateways in their own processes (one writing every request's line to a file, one with
access logs off) proxy the same small load from this process (HTTP/1.1 keep-alive, `--gateway-
concurrency` clients) to a minimal upstream here; each gateway's CPU time (user + system, its
writer threads included, from psutil) over the timed requests, per request. Rounds alternate
on/off and each figure is the median over rounds. Goal: at most 10 % more with logging on.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
from typing import Any

from federation.bench._machine import write_results
from federation.errors import UsageError
from gateway.policy.accesslog import AccessLogConfig
from gateway.policy.rules import RoutesConfig
from gateway.policy.table import RequestView, RouteTable
from gateway.policy.testing import sample_record

HELP = "route-rule evaluation and access-log formatting cost per request (pure, no I/O)"
GOAL_P50_US = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--services", type=int, default=1000, help="services in the table (default: %(default)s)"
    )
    parser.add_argument("--rules", type=int, default=100, help="rules per service (default: %(default)s)")
    parser.add_argument(
        "--requests", type=int, default=200_000, help="timed evaluations (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--gateway-requests", type=int, default=3000,
        help="requests per round through real gateways, logging on and off; 0 skips (default: %(default)s)",
    )
    parser.add_argument("--gateway-rounds", type=int, default=3, help="on/off rounds (default: %(default)s)")
    parser.add_argument("--gateway-concurrency", type=int, default=8, help="concurrent clients (default: %(default)s)")


GOAL_LOG_OVERHEAD = 0.10
UPSTREAM_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


def gateway_process(argv: list[str]) -> None:
    """Entry of a benchmark gateway process: `PKI_DIR UPSTREAM_PORT ACCESS_LOG|off`; prints its
    outbound `host:port` once serving, then serves until killed."""
    import sys

    import trio

    from certs.store import load_bundle, load_identity
    from gateway.catalog_source import StaticCatalogSource
    from gateway.config import GatewayConfig
    from gateway.server import serve_gateway
    from registry.model import Catalog, Endpoint, Locality, Service

    pki_dir, upstream_port, log_path = argv[0], int(argv[1]), argv[2]
    locality = Locality("us-east", "us-east-1a")
    config = GatewayConfig(
        cluster="east-1", locality=locality, eastwest="127.0.0.1:0", outbound="127.0.0.1:0", admin="127.0.0.1:0",
        identity=load_identity(pki_dir, "east-1", "gateway"), bundle=load_bundle(pki_dir),
    )
    endpoint = Endpoint("bench.demo", "east-1", "127.0.0.1", upstream_port, locality)
    catalog = Catalog("east-1", 1, {"bench.demo": Service("bench", "demo")}, {endpoint.id: endpoint})
    access_log = None if log_path == "off" else AccessLogConfig(path=log_path)

    async def main() -> None:
        class Started:
            def started(self, gateway: Any) -> None:
                host, port = gateway.addresses["outbound"]
                sys.stdout.write(f"{host}:{port}\n")
                sys.stdout.flush()

        await serve_gateway(config, StaticCatalogSource(catalog), access_log=access_log, task_status=Started())

    trio.run(main)


async def _serve_upstream(task_status: Any) -> None:
    """A minimal keep-alive HTTP/1.1 upstream: one fixed answer per request head."""
    import trio

    async def handle(stream: Any) -> None:
        buffer = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    await stream.send_all(UPSTREAM_RESPONSE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _load(address: str, requests: int, concurrency: int) -> None:
    import httpx
    import trio

    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(count: int) -> None:
            for _ in range(count):
                response = await client.get("/", headers={"host": "bench.demo"})
                if response.status_code != 200:
                    raise UsageError(f"gateway answered {response.status_code} during the benchmark")

        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(worker, requests // concurrency + (i < requests % concurrency))


def measure_gateways(requests: int, rounds: int, concurrency: int, work_dir: str) -> dict[str, Any]:
    """CPU us per request of a gateway with access logging on and off (see the module docstring)."""
    import subprocess
    import sys
    from pathlib import Path

    import psutil
    import trio

    from certs.testing import make_pki

    pki = make_pki(Path(work_dir) / "pki", clusters={"east-1": ("us-east", "us-east-1a")})
    log_file = Path(work_dir) / "access.log"

    def cpu_of(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    async def main() -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            upstream_port = await nursery.start(_serve_upstream)
            processes: dict[str, Any] = {}
            addresses: dict[str, str] = {}
            try:
                for mode, target in (("off", "off"), ("on", str(log_file))):
                    code = "import sys; from federation.bench.policy import gateway_process; gateway_process(sys.argv[1:])"
                    proc = await trio.lowlevel.open_process(
                        [sys.executable, "-c", code, str(pki.dir), str(upstream_port), target], stdout=subprocess.PIPE
                    )
                    processes[mode] = proc
                    line = b""
                    with trio.move_on_after(30):
                        while not line.endswith(b"\n"):
                            chunk = await proc.stdout.receive_some(256)
                            if not chunk:
                                break
                            line += chunk
                    if not line.strip():
                        raise UsageError(f"the benchmark gateway (access log {mode}) did not start")
                    addresses[mode] = line.decode().strip()
                samples: dict[str, list[float]] = {"off": [], "on": []}
                for mode in ("off", "on"):  # warm up both
                    await _load(addresses[mode], max(200, requests // 10), concurrency)
                for index in range(rounds):
                    for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
                        process = psutil.Process(processes[mode].pid)
                        before = cpu_of(process)
                        await _load(addresses[mode], requests, concurrency)
                        if mode == "on":
                            await trio.sleep(0.2)  # let the writer thread finish its last batch
                        samples[mode].append((cpu_of(process) - before) / requests * 1e6)
            finally:
                for proc in processes.values():
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
                nursery.cancel_scope.cancel()
        off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
        lines = len(log_file.read_text().splitlines()) if log_file.exists() else 0
        return {
            "requests_per_round": requests,
            "rounds": rounds,
            "concurrency": concurrency,
            "cpu_us_per_request_off": round(off, 1),
            "cpu_us_per_request_on": round(on, 1),
            "overhead": round(on / off - 1.0, 3),
            "samples_us": {k: [round(v, 1) for v in vs] for k, vs in samples.items()},
            "log_lines_written": lines,
            "goal_overhead": GOAL_LOG_OVERHEAD,
            "goal_met": on / off - 1.0 <= GOAL_LOG_OVERHEAD,
        }

    return trio.run(main)


def service_rules(index: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` reachable rules for one service, kinds interleaved in a seeded order."""
    kinds = ["exact"] * (count * 4 // 10) + ["prefix"] * (count * 4 // 10) + ["regex"] * (count // 10)
    kinds += ["header"] * (count - len(kinds))
    rng.shuffle(kinds)
    rules = []
    for k, kind in enumerate(kinds):
        rule: dict[str, Any] = {"name": f"r{k}"}
        if kind == "exact":
            rule["match"] = {"path": f"/e{k}/items", "method": ["GET", "HEAD"]}
            rule["timeout_s"] = 2.0
        elif kind == "prefix":
            rule["match"] = {"path_prefix": f"/p{k}/"}
            if k % 3 == 0:
                rule["match"]["headers"] = {"x-user": {"prefix": "beta"}}
            rule["split"] = [
                {"subset": {"version": "v1"}, "weight": 90},
                {"subset": {"version": "v2"}, "weight": 10},
            ]
            rule["rewrite_prefix"] = f"/v2/p{k}/"
        elif kind == "regex":
            rule["match"] = {"path_regex": f"/r{k}/[0-9]+", "source_cluster": "east-1"}
            rule["fault"] = {"delay": {"percent": 1, "seconds": 0.1}}
        else:
            rule["match"] = {"headers": {"x-tenant": {"exact": f"t{k}"}}}
            rule["request_headers"] = {"add": {"x-tenant-route": f"r{k}"}}
        rules.append(rule)
    return rules


def request_for(rules: list[dict[str, Any]], rng: random.Random) -> RequestView:
    """A request aimed at a random rule of the service (or at nothing, one time in five)."""
    headers = [
        ("accept", "*/*"),
        ("user-agent", "bench/1"),
        ("x-request-id", "0123456789abcdef"),
        ("x-user", "beta-7" if rng.random() < 0.5 else "prod"),
        ("x-tenant", f"t{rng.randrange(len(rules))}"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]
    if rng.random() < 0.2:
        return RequestView(
            "GET", "/nothing/here?x=1", headers, "east-1", "spiffe://mesh.example/cluster/east-1/gateway"
        )
    match = rules[rng.randrange(len(rules))].get("match", {})
    if "path" in match:
        path = match["path"]
    elif "path_prefix" in match:
        path = match["path_prefix"] + "orders/42?expand=1"
    elif "path_regex" in match:
        path = match["path_regex"].replace("[0-9]+", "12345")
    else:
        path = "/anything"
    return RequestView("GET", path, headers, "east-1", "spiffe://mesh.example/cluster/east-1/gateway")


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        start = clock()
        samples.append(clock() - start)
    return int(statistics.median(samples))


def _percentiles(samples_ns: list[int], overhead_ns: int) -> dict[str, float]:
    samples_ns.sort()
    n = len(samples_ns)

    def at(q: float) -> float:
        return max(0, samples_ns[min(n - 1, int(q * n))] - overhead_ns) / 1000.0

    return {"p50_us": round(at(0.50), 3), "p90_us": round(at(0.90), 3), "p99_us": round(at(0.99), 3)}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    for name, low in (("services", 1), ("rules", 1), ("requests", 100)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name}: {getattr(args, name)} is less than {low}")
    console = Console()
    rng = random.Random(args.seed)
    with console.status("building the route table"):
        raw = {f"svc{i}.bench": service_rules(i, args.rules, rng) for i in range(args.services)}
        start, start_cpu = time.perf_counter(), time.process_time()
        table = RouteTable.compile(RoutesConfig.from_mapping(raw), revision=1)
        compile_s = time.perf_counter() - start
        compile_cpu_s = time.process_time() - start_cpu
    services = list(raw)
    requests = []
    for _ in range(min(args.requests, 50_000)):
        service = services[rng.randrange(len(services))]
        requests.append((service, request_for(raw[service], rng)))

    overhead = _timer_overhead_ns()
    clock = time.perf_counter_ns
    match = table.match
    hits = 0
    samples: list[int] = []
    with console.status("timing route evaluation"):
        for service, request in requests[:5000]:  # warm up
            match(service, request, rng)
        gc.disable()
        try:
            for i in range(args.requests):
                service, template = requests[i % len(requests)]
                # Built just before the call, as the gateway builds it from headers it just parsed.
                request = RequestView(
                    template.method,
                    template.path,
                    [(name, value) for name, value in template.headers],
                    template.source_cluster,
                    template.source_spiffe_id,
                )
                start = clock()
                decision = match(service, request, rng)
                samples.append(clock() - start)
                hits += decision.rule is not None
        finally:
            gc.enable()
    route = _percentiles(samples, overhead)
    route["matched_fraction"] = round(hits / args.requests, 3)

    config = AccessLogConfig()
    record = sample_record()
    log_samples: list[int] = []
    count = min(args.requests, 100_000)
    with console.status("timing access-log formatting"):
        gc.disable()
        try:
            for _ in range(count):
                record.time += 0.0005
                start = clock()
                if config.should_log(record, rng):
                    config.format(record)
                log_samples.append(clock() - start)
        finally:
            gc.enable()
    access_log = _percentiles(log_samples, overhead)

    gateway_cpu = None
    gateway_requests = getattr(args, "gateway_requests", 0)
    if gateway_requests > 0:
        import tempfile

        if args.gateway_rounds < 1 or args.gateway_concurrency < 1:
            raise UsageError("--gateway-rounds and --gateway-concurrency must be at least 1")
        with console.status("measuring gateway CPU with access logging on and off"), \
                tempfile.TemporaryDirectory(prefix="isthmus-bench-policy-") as work_dir:
            gateway_cpu = measure_gateways(gateway_requests, args.gateway_rounds,
                                           args.gateway_concurrency, work_dir)

    payload = {
        "benchmark": "policy",
        "services": args.services,
        "rules_per_service": args.rules,
        "requests": args.requests,
        "seed": args.seed,
        "compile_s": round(compile_s, 3),
        "compile_cpu_s": round(compile_cpu_s, 3),
        # Other work on the box inflates wall-clock timings: keep the load next to the figures.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "timer_overhead_ns": overhead,
        "route_evaluation": route,
        "access_log_format": access_log,
        "goal_p50_us": GOAL_P50_US,
        "goal_met": route["p50_us"] <= GOAL_P50_US,
        "gateway_access_log_cpu": gateway_cpu,
    }
    path = write_results(args.out, payload)

    from rich.table import Table

    out = Table(title=f"policy: {args.services} services x {args.rules} rules, {args.requests} requests")
    for column in ("what", "p50 us", "p90 us", "p99 us", "note"):
        out.add_column(column)
    out.add_row(
        "route evaluation",
        f"{route['p50_us']:.2f}",
        f"{route['p90_us']:.2f}",
        f"{route['p99_us']:.2f}",
        f"goal p50 <= {GOAL_P50_US:g} us: {'met' if payload['goal_met'] else 'MISSED'}; "
        f"{route['matched_fraction']:.0%} matched a rule",
    )
    out.add_row(
        "access-log sample + format",
        f"{access_log['p50_us']:.2f}",
        f"{access_log['p90_us']:.2f}",
        f"{access_log['p99_us']:.2f}",
        "per logged request",
    )
    console.print(out)
    if gateway_cpu is not None:
        second = Table(title=f"gateway CPU per request, access log on vs off ({gateway_cpu['rounds']} rounds x "
                             f"{gateway_cpu['requests_per_round']} requests, {gateway_cpu['concurrency']} clients)")
        for column in ("access log", "CPU us/request (median)", "rounds", "note"):
            second.add_column(column)
        second.add_row("off", f"{gateway_cpu['cpu_us_per_request_off']:.1f}",
                       ", ".join(f"{v:.1f}" for v in gateway_cpu["samples_us"]["off"]), "")
        second.add_row("on (file, every request)", f"{gateway_cpu['cpu_us_per_request_on']:.1f}",
                       ", ".join(f"{v:.1f}" for v in gateway_cpu["samples_us"]["on"]),
                       f"{gateway_cpu['overhead']:+.1%}; goal <= +{GOAL_LOG_OVERHEAD:.0%}: "
                       f"{'met' if gateway_cpu['goal_met'] else 'MISSED'}")
        console.print(second)
    console.print(
        f"parsed and compiled in {compile_s:.2f} s ({compile_cpu_s:.2f} s CPU); "
        f"load average {payload['load_average_1m']}; results written to {path}"
    )
    return 0
