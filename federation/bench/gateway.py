"""`isthmus bench gateway`: the gateway against HAProxy, measured the same way in one interleaved run.

Owns the benchmark's topology and arithmetic:

- upstream: two nghttpd servers (one TLS requiring a client certificate, one h2c) serving a 100 B
  and a 64 KiB file, pinned to the load generator's CPU;
- targets (each reached by h2load at the same concurrency): `direct` (the TLS upstream),
  `haproxy-l7` (HAProxy 2.6 terminating mutual TLS, h2 both sides), `haproxy-tcp` (TCP mode, SNI
  passthrough to the TLS upstream), `isthmus-l7` (the east-west listener, `http` mode, to the h2c
  upstream), `isthmus-passthrough` (east-west, `passthrough` mode, to the TLS upstream) and
  `isthmus-pair` (h2c into one gateway's outbound listener, mutual TLS to a second gateway's
  east-west listener, then the h2c upstream), and `h2-floor` (`benchmarks/h2floor.py`: the gateway's
  own mutual-TLS HTTP/2 plumbing, `gateway.h2conn` on trio, with a handler that only forwards, to
  the h2c upstream: the floor under any L7 gateway built on these pieces, rated like `isthmus-l7`);
- mutual TLS is originated identically for every TLS target: a preloaded library makes h2load
  present a client certificate (or, when it cannot be built, a HAProxy on the load generator's CPU
  turns h2c into mutual TLS);
- the proxy under test runs on its own CPU; its CPU time (utime + stime of it and its workers,
  both gateways for the pair) over each load run, divided by the completed requests, is
  `cpu_us_per_req`; req/s and latency percentiles come from h2load (per-request log on tmpfs);
- rounds are interleaved (every target once per round, rotating the order) and each figure is the
  median over rounds; efficiency = HAProxy's µs/req ÷ Isthmus's µs/req in the same run.

Writes `benchmarks/results/gateway.json` (`machine`, `date`, `runs`, `efficiency`, `notes`) and
prints tables. Isthmus targets that cannot start are reported as unavailable, not fatal. This is the
composition root for the benchmark: it may import `certs`, `registry` and start `isthmus gateway`,
but it does not import `gateway`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import string
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomli_w
import trio

from federation.bench import _loadtools as lt
from federation.bench._machine import write_results
from federation.errors import FederationError, UsageError

HELP = "gateway req/s, latency and proxy CPU per request against HAProxy (h2load, nghttpd)"

TARGETS = ("direct", "haproxy-l7", "haproxy-tcp", "isthmus-l7", "isthmus-passthrough", "isthmus-pair", "h2-floor")
BODIES = {100: "/100b", 65536: "/64k"}
# streams -> (connections, concurrent streams per connection)
SHAPES = {1: (1, 1), 50: (10, 5)}
# Which HAProxy mode each Isthmus target is rated against, and the issue's goals for one worker.
VERSUS = {"isthmus-l7": "haproxy-l7", "isthmus-passthrough": "haproxy-tcp", "h2-floor": "haproxy-l7"}
EFFICIENCY_GOALS = {("isthmus-l7", 100): 0.10, ("isthmus-l7", 65536): 0.45,
                    ("isthmus-passthrough", 100): 0.50, ("isthmus-passthrough", 65536): 0.85}
ADDED_P50_GOALS_MS = {"isthmus-l7": 0.5, "isthmus-passthrough": 0.15, "isthmus-pair": 0.5}
HOPS = {"haproxy-l7": 1, "haproxy-tcp": 1, "isthmus-l7": 1, "isthmus-passthrough": 1, "isthmus-pair": 2,
        "h2-floor": 1}

TRUST_DOMAIN = "mesh.example"
CLUSTER = "bench"  # the gateway under test (east-west) and the upstream
OUT_CLUSTER = "bench-out"  # the calling gateway of the pair
CLIENT_CLUSTER = "client"  # the load generator's identity
REGION, ZONE, OUT_ZONE = "local", "local-a", "local-b"
L7_SERVICE = "echo.bench"  # gateway_mode http, h2c endpoint
TLS_SERVICE = "echo-tls.bench"  # gateway_mode passthrough, TLS endpoint
TLS13_SUITE = "TLS_AES_128_GCM_SHA256"
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
HAPROXY_TEMPLATES = REPO / "benchmarks" / "haproxy"
H2_FLOOR = REPO / "benchmarks" / "h2floor.py"

CLIENT_CPUS = (0,)
PROXY_CPUS = (1,)


@attrs.frozen
class Options:
    duration_s: float
    rounds: int
    targets: tuple[str, ...]
    bodies: tuple[int, ...]
    streams: tuple[int, ...]
    mtls_origin: str
    workers_check: bool
    out: Path
    keep_dir: bool
    profile: Path | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=3.0, metavar="S",
                        help="seconds of load per target per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="interleaved rounds; each figure is the median over rounds (default: %(default)s)")
    parser.add_argument("--targets", default=",".join(TARGETS), metavar="A,B,...",
                        help=f"targets to measure (default: all: {','.join(TARGETS)})")
    parser.add_argument("--bodies", default="100,65536", metavar="BYTES,...",
                        help="response sizes (default: %(default)s)")
    parser.add_argument("--streams", default="1,50", metavar="N,...",
                        help="concurrency: 1 = 1 connection x 1 stream, 50 = 10 connections x 5 (default: %(default)s)")
    parser.add_argument("--mtls-origin", choices=("auto", "shim", "haproxy"), default="auto",
                        help="how h2load's mutual TLS is originated: a preloaded client-certificate library "
                             "(needs gcc and libssl-dev) or a HAProxy beside h2load (default: auto = shim if it builds)")
    parser.add_argument("--no-workers-check", dest="workers_check", action="store_false",
                        help="skip the isthmus-l7 --workers 2 vs 1 throughput comparison")
    parser.add_argument("--profile", metavar="FILE", type=Path,
                        help="after the rounds, sample isthmus-l7 at 100 B x the largest --streams with py-spy and write the "
                             "hottest functions and packages to FILE (the collapsed stacks to FILE.collapsed)")
    parser.add_argument("--keep-dir", action="store_true",
                        help="keep the working directory (configs, certificates, process logs)")


def _csv(text: str, what: str, allowed: Sequence[Any], convert: Callable[[str], Any] = str) -> tuple[Any, ...]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = convert(part)
        except ValueError:
            value = part
        if value not in allowed:
            raise UsageError(f"--{what}: {part!r} is not one of {', '.join(str(a) for a in allowed)}")
        if value not in out:
            out.append(value)
    if not out:
        raise UsageError(f"--{what}: name at least one of {', '.join(str(a) for a in allowed)}")
    return tuple(out)


def options_from_args(args: argparse.Namespace) -> Options:
    if not (isinstance(args.duration, float) and math.isfinite(args.duration) and 0.1 <= args.duration <= 600):
        raise UsageError(f"--duration: {args.duration!r} is not a number of seconds in 0.1-600")
    if not 1 <= args.rounds <= 100:
        raise UsageError(f"--rounds: {args.rounds!r} is not in 1-100")
    return Options(
        duration_s=args.duration,
        rounds=args.rounds,
        targets=_csv(args.targets, "targets", TARGETS),
        bodies=_csv(args.bodies, "bodies", tuple(BODIES), int),
        streams=_csv(args.streams, "streams", tuple(SHAPES), int),
        mtls_origin=args.mtls_origin,
        workers_check=args.workers_check,
        out=Path(args.out),
        keep_dir=args.keep_dir,
        profile=getattr(args, "profile", None),
    )


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    for tool in ("h2load", "nghttpd", "haproxy", "taskset"):
        lt.find_tool(tool)
    if options.profile is not None:
        py_spy_path()
    if not {*CLIENT_CPUS, *PROXY_CPUS} <= set(lt.usable_cpus()):
        raise UsageError(f"this process may only use CPUs {lt.usable_cpus()}: the benchmark pins the client to CPU "
                         f"{CLIENT_CPUS[0]} and the proxy to CPU {PROXY_CPUS[0]}")
    try:
        payload = trio.run(measure, options)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
    path = write_results(options.out, payload)
    print_report(payload)
    print(f"wrote {path}")
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """Ctrl-C or a one-line benchmark error out of trio's exception groups, so the CLI reports it plainly."""
    leaves = _leaves(group)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return KeyboardInterrupt()
    if leaves and all(isinstance(leaf, FederationError) for leaf in leaves):
        return leaves[0]
    return group


# --------------------------------------------------------------------------- PKI and files


@attrs.frozen
class Pki:
    dir: Path
    bundle: Path
    client_cert: Path  # leaf + intermediate
    client_key: Path
    client_pem: Path  # chain + key in one file (HAProxy's `crt`)
    upstream_cert: Path
    upstream_key: Path
    haproxy_pem: Path


def make_pki(pki_dir: Path) -> Pki:
    """A throwaway mesh PKI (root, cluster CAs, ECDSA P-256 identities) in the `certs` layout."""
    from certs import pki as certs_pki

    certs_pki.init_root(pki_dir, TRUST_DOMAIN)
    for cluster, zone in ((CLUSTER, ZONE), (OUT_CLUSTER, OUT_ZONE), (CLIENT_CLUSTER, ZONE)):
        certs_pki.create_cluster_ca(pki_dir, cluster, region=REGION, zone=zone)
    dirs = {
        "upstream": certs_pki.issue_identity(pki_dir, CLUSTER, "upstream", dns_names=[TLS_SERVICE, L7_SERVICE]),
        "haproxy": certs_pki.issue_identity(pki_dir, CLUSTER, "haproxy", dns_names=[L7_SERVICE, TLS_SERVICE]),
        "gateway": certs_pki.issue_identity(pki_dir, CLUSTER, "gateway", dns_names=[L7_SERVICE, TLS_SERVICE]),
        "out": certs_pki.issue_identity(pki_dir, OUT_CLUSTER, "gateway", dns_names=[L7_SERVICE]),
        "client": certs_pki.issue_identity(pki_dir, CLIENT_CLUSTER, "gateway"),
    }
    combined = {}
    for name in ("client", "haproxy"):
        pem = pki_dir / f"{name}-combined.pem"
        pem.write_bytes((dirs[name] / "chain.pem").read_bytes() + (dirs[name] / "key.pem").read_bytes())
        pem.chmod(0o600)
        combined[name] = pem
    return Pki(
        dir=pki_dir,
        bundle=pki_dir / "bundle.pem",
        client_cert=dirs["client"] / "chain.pem",
        client_key=dirs["client"] / "key.pem",
        client_pem=combined["client"],
        upstream_cert=dirs["upstream"] / "chain.pem",
        upstream_key=dirs["upstream"] / "key.pem",
        haproxy_pem=combined["haproxy"],
    )


def write_htdocs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for size, path in BODIES.items():
        (directory / path.lstrip("/")).write_bytes(os.urandom(size))


def render_haproxy(template: str, out: Path, **values: Any) -> Path:
    text = (HAPROXY_TEMPLATES / template).read_text()
    out.write_text(string.Template(text).substitute({k: str(v) for k, v in values.items()}))
    return out


def _shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


# --------------------------------------------------------------------------- targets


@attrs.frozen
class Route:
    """How h2load reaches one target, and which processes are the proxy under test."""

    target: str
    url_host: str
    port: int
    tls: bool
    proxy_pids: tuple[int, ...]

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.url_host}:{self.port}{path}"


@attrs.define
class Bench:
    options: Options
    work: Path
    group: lt.ProcessGroup
    pki: Pki
    up_tls: int = 0
    up_h2c: int = 0
    shim: Path | None = None
    origin_note: str = ""

    # ---- load generator side

    def client_env(self) -> dict[str, str]:
        if self.shim is None:
            return {}
        return {
            "LD_PRELOAD": str(self.shim),
            "ISTHMUS_BENCH_CLIENT_CERT": str(self.pki.client_cert),
            "ISTHMUS_BENCH_CLIENT_KEY": str(self.pki.client_key),
            "ISTHMUS_BENCH_CA_FILE": str(self.pki.bundle),
            "ISTHMUS_BENCH_TLS13_SUITES": TLS13_SUITE,
        }

    async def setup_origin(self) -> None:
        if self.options.mtls_origin in ("auto", "shim"):
            try:
                self.shim = await lt.build_client_cert_shim(self.work)
            except lt.LoadToolError:
                if self.options.mtls_origin == "shim":
                    raise
            else:
                self.origin_note = (
                    "mutual TLS originated by h2load itself: an LD_PRELOAD library wraps SSL_CTX_new to load the "
                    f"client certificate (spiffe://{TRUST_DOMAIN}/cluster/{CLIENT_CLUSTER}/gateway), verify the "
                    f"server chain against the bundle and offer only {TLS13_SUITE}"
                )
                return
        self.origin_note = (
            "mutual TLS originated by a HAProxy beside h2load on the client CPU (h2c in; client certificate, "
            "ALPN h2, SNI out; one server connection per client connection); its CPU is not counted"
        )

    async def via_origin(self, route: Route, sni: str) -> Route:
        """With the HAProxy origin, h2load speaks h2c to an origin that opens mutual TLS to `route`."""
        if self.shim is not None or not route.tls:
            return route
        port = lt.free_port()
        cfg = render_haproxy(
            "origin.cfg.tmpl", self.work / f"origin-{route.target}.cfg", host=HOST, port=port,
            target=f"{HOST}:{route.port}", client_pem=self.pki.client_pem, ca_file=self.pki.bundle, sni=sni,
        )
        await self.group.start(f"origin-{route.target}", [lt.find_tool("haproxy"), "-db", "-f", str(cfg)],
                               cpus=CLIENT_CPUS, ready_port=(HOST, port))
        return attrs.evolve(route, port=port, tls=False)

    # ---- upstream

    async def start_upstreams(self) -> None:
        htdocs = self.work / "htdocs"
        write_htdocs(htdocs)
        nghttpd = lt.find_tool("nghttpd")
        self.up_tls, self.up_h2c = lt.free_port(), lt.free_port()
        await self.group.start(
            "nghttpd-tls",
            [nghttpd, "--verify-client", "-a", HOST, "-d", str(htdocs), str(self.up_tls),
             str(self.pki.upstream_key), str(self.pki.upstream_cert)],
            cpus=CLIENT_CPUS, ready_port=(HOST, self.up_tls),
        )
        await self.group.start(
            "nghttpd-h2c", [nghttpd, "--no-tls", "-a", HOST, "-d", str(htdocs), str(self.up_h2c)],
            cpus=CLIENT_CPUS, ready_port=(HOST, self.up_h2c),
        )

    # ---- targets

    async def start_target(self, target: str) -> Route:
        if target == "direct":
            route = Route(target, TLS_SERVICE, self.up_tls, True, ())
            return await self.via_origin(route, TLS_SERVICE)
        if target in ("haproxy-l7", "haproxy-tcp"):
            port = lt.free_port()
            if target == "haproxy-l7":
                cfg = render_haproxy("l7.cfg.tmpl", self.work / "haproxy-l7.cfg", host=HOST, port=port,
                                     server_pem=self.pki.haproxy_pem, ca_file=self.pki.bundle,
                                     upstream_h2c=f"{HOST}:{self.up_h2c}")
                host = L7_SERVICE
            else:
                cfg = render_haproxy("tcp.cfg.tmpl", self.work / "haproxy-tcp.cfg", host=HOST, port=port,
                                     sni=TLS_SERVICE, upstream_tls=f"{HOST}:{self.up_tls}")
                host = TLS_SERVICE
            server = await self.group.start(target, [lt.find_tool("haproxy"), "-db", "-f", str(cfg)],
                                            cpus=PROXY_CPUS, ready_port=(HOST, port))
            return await self.via_origin(Route(target, host, port, True, (server.pid,)), host)
        if target in ("isthmus-l7", "isthmus-passthrough"):
            gw = await self.start_gateway(target, CLUSTER, workers=1, cpus=PROXY_CPUS)
            host = L7_SERVICE if target == "isthmus-l7" else TLS_SERVICE
            route = Route(target, host, gw.eastwest_port, True, (gw.server.pid,))
            return await self.via_origin(route, host)
        if target == "h2-floor":
            port = lt.free_port()
            argv = [sys.executable, str(H2_FLOOR), "--listen", f"{HOST}:{port}", "--upstream", f"{HOST}:{self.up_h2c}",
                    "--pki", str(self.pki.dir), "--cluster", CLUSTER]
            server = await self.group.start(target, argv, cpus=PROXY_CPUS, ready_port=(HOST, port),
                                            env={"PYTHONPATH": str(REPO)})
            return await self.via_origin(Route(target, L7_SERVICE, port, True, (server.pid,)), L7_SERVICE)
        if target == "isthmus-pair":
            east = await self.start_gateway("isthmus-pair-eastwest", CLUSTER, workers=1, cpus=PROXY_CPUS)
            out = await self.start_gateway("isthmus-pair-outbound", OUT_CLUSTER, workers=1, cpus=PROXY_CPUS,
                                           remote_eastwest=east.eastwest_port)
            return Route(target, L7_SERVICE, out.outbound_port, False, (out.server.pid, east.server.pid))
        raise UsageError(f"--targets: {target!r} is not a target")

    async def start_gateway(self, name: str, cluster: str, *, workers: int, cpus: Sequence[int],
                            remote_eastwest: int | None = None) -> Gateway:
        ports = {k: lt.free_port() for k in ("eastwest", "outbound", "admin")}
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        catalog_path = directory / "catalog.json"
        catalog_path.write_text(catalog_json(cluster, self.up_h2c, self.up_tls, self.pki.bundle, remote_eastwest))
        config_path = directory / "cluster.toml"
        config = {
            "trust_domain": TRUST_DOMAIN,
            "cluster": {"name": cluster, "region": REGION, "zones": [OUT_ZONE if cluster == OUT_CLUSTER else ZONE],
                        "data_dir": str(directory / "data")},
            "pki": {"dir": str(self.pki.dir)},
            "gateway": {"eastwest": f"{HOST}:{ports['eastwest']}", "outbound": f"{HOST}:{ports['outbound']}",
                        "admin": f"{HOST}:{ports['admin']}", "catalog_file": str(catalog_path)},
        }
        config_path.write_text(tomli_w.dumps(config))
        argv = [sys.executable, "-m", "federation.cli", "gateway", "--config", str(config_path),
                "--catalog", str(catalog_path), "--workers", str(workers)]
        listen = ports["outbound"] if remote_eastwest is not None else ports["eastwest"]
        server = await self.group.start(name, argv, cpus=cpus, cwd=directory, ready_port=(HOST, listen),
                                        ready_timeout_s=20.0)
        return Gateway(server, ports["eastwest"], ports["outbound"], ports["admin"])


@attrs.frozen
class Gateway:
    server: lt.Server
    eastwest_port: int
    outbound_port: int
    admin_port: int


def catalog_json(cluster: str, up_h2c: int, up_tls: int, bundle: Path, remote_eastwest: int | None) -> str:
    """The catalog file for one gateway of the benchmark (`registry.codec` shape).

    The gateway under test (cluster `bench`) owns both services with local endpoints, exported to
    every peer. The pair's outbound gateway (`bench-out`) sees `echo.bench` as an endpoint in
    cluster `bench`, reached through `bench`'s east-west listener.
    """
    from registry import codec
    from registry.model import Catalog, Endpoint, Export, Locality, Peer, Service

    bundle_pem = bundle.read_text()
    services = {
        L7_SERVICE: Service.from_key(L7_SERVICE, protocol="http2", ports=(up_h2c,), gateway_mode="http"),
        TLS_SERVICE: Service.from_key(TLS_SERVICE, protocol="tcp", ports=(up_tls,), gateway_mode="passthrough"),
    }
    local = Locality(REGION, ZONE)
    endpoints = [
        Endpoint(L7_SERVICE, CLUSTER, HOST, up_h2c, local),
        Endpoint(TLS_SERVICE, CLUSTER, HOST, up_tls, local),
    ]
    peers = [Peer(CLIENT_CLUSTER, REGION, (ZONE,), gateway=f"{HOST}:9", trust_bundle_pem=bundle_pem)]
    if cluster == OUT_CLUSTER and remote_eastwest is not None:
        peers = [Peer(CLUSTER, REGION, (ZONE,), gateway=f"{HOST}:{remote_eastwest}", trust_bundle_pem=bundle_pem)]
    else:
        peers.append(Peer(OUT_CLUSTER, REGION, (OUT_ZONE,), gateway=f"{HOST}:9", trust_bundle_pem=bundle_pem))
    catalog = Catalog(
        cluster=cluster,
        revision=1,
        services=services,
        endpoints={e.id: e for e in endpoints},
        exports={k: Export(k, ("*",)) for k in services},
        peers={p.name: p for p in peers},
    )
    return json.dumps(codec.catalog_to_json(catalog), indent=2) + "\n"


# --------------------------------------------------------------------------- measuring


@attrs.frozen
class Sample:
    target: str
    body_bytes: int
    streams: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float | None
    failed: int


async def load_once(bench: Bench, route: Route, body: int, streams: int, *, duration_s: float | None,
                    requests: int | None = None, client_cpus: Sequence[int] = CLIENT_CPUS) -> Sample:
    connections, per_connection = SHAPES[streams]
    log_file = _shm_dir() / f"isthmus-bench-{os.getpid()}.log"
    argv = lt.h2load_argv(
        route.url(BODIES[body]), connections=connections, streams=per_connection, duration_s=duration_s,
        requests=requests, connect_to=f"{HOST}:{route.port}", log_file=log_file, h2c=not route.tls,
    )
    before = lt.cpu_seconds(route.proxy_pids)
    result = await lt.run_h2load(argv, cpus=client_cpus, env=bench.client_env() if route.tls else {},
                                 log_file=log_file, timeout_s=(duration_s or 10) + 60)
    after = lt.cpu_seconds(route.proxy_pids)
    done = result.summary.succeeded
    cpu = (after - before) / done * 1e6 if route.proxy_pids and done else None
    return Sample(route.target, body, streams, result.summary.rps, result.p50_ms, result.p99_ms, cpu,
                  result.summary.total - result.summary.succeeded)


async def measure(options: Options) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="isthmus-bench-gateway-"))
    (work / "logs").mkdir()
    unavailable: dict[str, str] = {}
    samples: list[Sample] = []
    workers: dict[str, Any] | None = None
    origin_note = ""
    try:
        async with lt.ProcessGroup(work / "logs") as group:
            bench = Bench(options, work, group, make_pki(work / "pki"))
            await bench.setup_origin()
            origin_note = bench.origin_note
            await bench.start_upstreams()
            routes: dict[str, Route] = {}
            for target in options.targets:
                try:
                    route = await bench.start_target(target)
                    for body in options.bodies:  # warm-up, and proof the target serves both bodies
                        sample = await load_once(bench, route, body, 50, duration_s=None, requests=500)
                        if sample.failed or not sample.rps:
                            raise lt.LoadToolError(f"{target}: {sample.failed} of 500 warm-up requests failed")
                    routes[target] = route
                except lt.LoadToolError as exc:
                    unavailable[target] = str(exc)
            samples = await interleave(bench, routes, options, unavailable)
            if options.profile is not None and "isthmus-l7" in routes:
                await profile_route(bench, routes["isthmus-l7"], options.profile, max(options.duration_s, 5.0),
                                    streams=max(options.streams))
            if options.workers_check and "isthmus-l7" in routes:
                try:
                    workers = await compare_workers(bench, options)
                except lt.LoadToolError as exc:
                    unavailable["isthmus-l7 --workers 2"] = str(exc)
    finally:
        if options.keep_dir:
            print(f"working directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return build_payload(options, samples, unavailable, workers, origin_note)


async def interleave(bench: Bench, routes: dict[str, Route], options: Options,
                     unavailable: dict[str, str]) -> list[Sample]:
    """Every target once per body and concurrency per round; a target that stops answering is
    dropped (and named in `unavailable`) while the others go on."""
    from rich.progress import Progress

    order = [t for t in options.targets if t in routes]
    combos = [(b, s) for b in options.bodies for s in options.streams]
    samples: list[Sample] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("gateway bench", total=options.rounds * len(combos) * len(order))
        for round_index in range(options.rounds):
            for body, streams in combos:
                shift = round_index % max(1, len(order))
                for target in order[shift:] + order[:shift]:
                    progress.advance(task)
                    if target in unavailable:
                        continue
                    progress.update(task, description=f"round {round_index + 1}: {target} {body} B x{streams}")
                    try:
                        samples.append(await load_once(bench, routes[target], body, streams,
                                                       duration_s=options.duration_s))
                    except lt.LoadToolError as exc:
                        unavailable[target] = f"failed in round {round_index + 1} ({body} B x {streams}): {exc}"
    return samples


async def compare_workers(bench: Bench, options: Options) -> dict[str, Any]:
    """isthmus-l7 with 1 and 2 workers, both free to use both CPUs, at 100 B x 50 streams."""
    both = lt.usable_cpus()
    routes = {}
    for n in (1, 2):
        gw = await bench.start_gateway(f"isthmus-l7-workers-{n}", CLUSTER, workers=n, cpus=both)
        routes[n] = await bench.via_origin(Route(f"isthmus-l7-w{n}", L7_SERVICE, gw.eastwest_port, True,
                                                 (gw.server.pid,)), L7_SERVICE)
        await load_once(bench, routes[n], 100, 50, duration_s=None, requests=500)
    rps: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}  # CPUs the gateway's processes kept busy
    for _ in range(options.rounds):
        for n in (1, 2):
            sample = await load_once(bench, routes[n], 100, 50, duration_s=options.duration_s)
            rps[n].append(sample.rps)
            if sample.cpu_us_per_req is not None:
                busy[n].append(sample.rps * sample.cpu_us_per_req / 1e6)
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    cpus_one = statistics.median(busy[1]) if busy[1] else None
    cpus_two = statistics.median(busy[2]) if busy[2] else None
    per_cpu = (two / cpus_two) / (one / cpus_one) if one and cpus_one and cpus_two else None
    return {
        "target": "isthmus-l7",
        "body_bytes": 100,
        "streams": 50,
        "rps_workers_1": round(one, 1),
        "rps_workers_2": round(two, 1),
        "ratio": round(two / one, 3) if one else None,
        "goal": 1.8,
        # How much CPU the workers got (h2load and nghttpd share CPU 0 with them) and their req/s per
        # CPU against one worker's: a ratio below the goal with per-CPU throughput near 1.0 is the
        # CPU the load generator left, not the workers' scaling.
        "cpus_busy_workers_1": round(cpus_one, 2) if cpus_one else None,
        "cpus_busy_workers_2": round(cpus_two, 2) if cpus_two else None,
        "per_cpu_ratio": round(per_cpu, 3) if per_cpu else None,
        "cpus": f"gateway on CPUs {','.join(map(str, both))}, h2load and nghttpd on CPU {CLIENT_CPUS[0]}",
    }


def py_spy_path() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise UsageError("--profile: py-spy not found (pip install py-spy into the virtualenv)")
    return found


async def profile_route(bench: Bench, route: Route, out: Path, duration_s: float, *, streams: int) -> None:
    """Sample the proxy of `route` with py-spy while it serves 100 B x `streams`; write a summary."""
    collapsed = out.with_name(out.name + ".collapsed")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [py_spy_path(), "record", "--pid", str(route.proxy_pids[0]), "--rate", "250", "--format", "raw",
            "--full-filenames", "--nonblocking", "--duration", str(math.ceil(duration_s) + 1),
            "--output", str(collapsed)]
    async with trio.open_nursery() as nursery:
        async def record() -> None:
            await trio.run_process(lt.pin_argv(argv, CLIENT_CPUS), capture_stdout=True, capture_stderr=True)

        nursery.start_soon(record)
        await trio.sleep(0.5)  # let py-spy attach before the load starts
        sample = await load_once(bench, route, 100, streams, duration_s=duration_s)
    shares = summarize_collapsed(collapsed.read_text())
    lines = [f"py-spy, {route.target}, 100 B x {streams} streams, {duration_s:g} s, {sample.rps:,.0f} req/s "
             f"(py-spy on the client CPU; figures are shares of on-CPU samples)"]
    for title, kind, top in (("inclusive, by the library the gateway's code called", "called from gateway", 12),
                             ("self time by package", "package", 15),
                             ("self time by function", "function", 30)):
        lines += ["", f"{title}:"] + [f"  {share:6.1%}  {name}" for name, share in shares[kind][:top]]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


# --------------------------------------------------------------------------- arithmetic (pure)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def package_of(path: str) -> str:
    """A source file's package for profiles: `h2`, `trio`, `gateway`, `stdlib ssl`, ..."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith("<attrs generated"):  # attrs-made __init__/__eq__ of a class: its package
        return path.removeprefix("<attrs generated ").split(" ", 1)[-1].split(".", 1)[0].lstrip("<")
    match = re.search(r"/python3\.\d+/(?:lib-dynload/)?([^/]+)", path)
    if match:
        return "stdlib " + match.group(1).removesuffix(".py")
    for package in ("gateway", "registry", "certs", "federation"):
        if f"/{package}/" in path or path.startswith(f"{package}/"):
            return package
    return path or "?"


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    return (match.group("func"), match.group("file")) if match else (text, "")


def summarize_collapsed(text: str) -> dict[str, list[tuple[str, float]]]:
    """Shares of py-spy's collapsed ("raw") samples: self time by function and by package, and
    inclusive time by the first library the gateway's own code called into (`h2` counts the
    hpack and hyperframe work it does; `gateway` is time in the gateway's own lines)."""
    tallies: dict[str, dict[str, int]] = {"function": {}, "package": {}, "called from gateway": {}}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        func, path = frames[-1]
        package = package_of(path)
        called = "outside the gateway's code (event loop, scheduling)"
        for i, (_, frame_path) in enumerate(frames):
            if package_of(frame_path) == "gateway":
                below = frames[i + 1] if i + 1 < len(frames) else None
                called = "gateway" if below is None else package_of(below[1])
        for kind, key in (("function", f"{func} ({package}: {path.rsplit('/', 1)[-1]})"), ("package", package),
                          ("called from gateway", called)):
            tallies[kind][key] = tallies[kind].get(key, 0) + count
        total += count
    return {kind: sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1]) if total else []
            for kind, counts in tallies.items()}


def _median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summarize(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """One run per (target, body, streams): medians over rounds, in target order."""
    keys: list[tuple[str, int, int]] = []
    for s in samples:
        if (s.target, s.body_bytes, s.streams) not in keys:
            keys.append((s.target, s.body_bytes, s.streams))
    keys.sort(key=lambda k: (TARGETS.index(k[0]), k[1], k[2]))
    runs = []
    for target, body, streams in keys:
        group = [s for s in samples if (s.target, s.body_bytes, s.streams) == (target, body, streams)]
        runs.append({
            "target": target,
            "body_bytes": body,
            "streams": streams,
            "rps": _round(_median([s.rps for s in group]), 1),
            "p50_ms": _round(_median([s.p50_ms for s in group]), 3),
            "p99_ms": _round(_median([s.p99_ms for s in group]), 3),
            "cpu_us_per_req": _round(_median([s.cpu_us_per_req for s in group]), 2),
        })
    return runs


def efficiency(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """HAProxy µs/req ÷ Isthmus µs/req per body and concurrency, and added p50 per hop at 1 stream."""
    by = {(r["target"], r["body_bytes"], r["streams"]): r for r in runs}
    ratios = []
    for target, versus in VERSUS.items():
        for (t, body, streams), run in sorted(by.items()):
            if t != target:
                continue
            other = by.get((versus, body, streams))
            ours, theirs = run["cpu_us_per_req"], other and other["cpu_us_per_req"]
            if not ours or not theirs:
                continue
            ratio = theirs / ours
            goal = EFFICIENCY_GOALS.get((target, body))
            ratios.append({"target": target, "versus": versus, "body_bytes": body, "streams": streams,
                           "isthmus_cpu_us_per_req": ours, "haproxy_cpu_us_per_req": theirs,
                           "efficiency": round(ratio, 3), "goal": goal,
                           "met": None if goal is None else ratio >= goal})
    added = []
    for (t, body, streams), run in sorted(by.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1])):
        direct = by.get(("direct", body, 1))
        if streams != 1 or t not in HOPS or not direct or run["p50_ms"] is None or direct["p50_ms"] is None:
            continue
        per_hop = (run["p50_ms"] - direct["p50_ms"]) / HOPS[t]
        goal = ADDED_P50_GOALS_MS.get(t)
        added.append({"target": t, "body_bytes": body, "hops": HOPS[t], "added_p50_ms_per_hop": round(per_hop, 3),
                      "goal_ms": goal, "met": None if goal is None else per_hop <= goal})
    return {
        "definition": "efficiency = HAProxy cpu_us_per_req / Isthmus cpu_us_per_req in the same run "
                      "(isthmus-l7 vs haproxy-l7, isthmus-passthrough vs haproxy-tcp); added p50 per hop = "
                      "(target p50 - direct p50) / hops at 1 stream",
        "cpu": ratios,
        "added_latency": added,
    }


def build_payload(options: Options, samples: Sequence[Sample], unavailable: dict[str, str],
                  workers: dict[str, Any] | None, origin_note: str) -> dict[str, Any]:
    runs = summarize(samples)
    eff = efficiency(runs)
    eff["workers"] = workers
    failed = sum(s.failed for s in samples)
    notes = [
        origin_note + ".",
        f"h2load -t 1: streams 1 = 1 connection x 1 stream, 50 = 10 connections x 5 streams; "
        f"{options.duration_s:g} s per target per round, {options.rounds} interleaved rounds (target order rotated "
        f"each round), medians over rounds; 500-request warm-up per target and body; TLS 1.3 {TLS13_SUITE}, "
        "ECDSA P-256 certificates from the mesh PKI, client certificate required by every TLS server.",
        f"CPU {CLIENT_CPUS[0]}: h2load and the nghttpd upstreams (TLS with --verify-client, and h2c); CPU "
        f"{PROXY_CPUS[0]}: the proxy under test. cpu_us_per_req = the proxy's utime+stime (with workers; both "
        "gateways for isthmus-pair) over the load run / succeeded requests; null for direct (no proxy). Latency "
        "percentiles from h2load's per-request log on tmpfs.",
        "Upstreams: haproxy-l7, isthmus-l7 and isthmus-pair forward to the h2c nghttpd; direct, haproxy-tcp and "
        "isthmus-passthrough reach the TLS nghttpd, which terminates the client's mutual TLS end to end. "
        "isthmus-pair: h2load speaks h2c to the outbound listener, which originates mutual TLS to the second "
        "gateway's east-west listener. h2-floor: the gateway's own HTTP/2 connection code (gateway.h2conn, TLS, "
        "trio, a task per stream) with a handler that only forwards to the h2c nghttpd (no routing, policy, "
        "balancer, timeouts, metrics or trace context): the floor under the L7 path, rated against haproxy-l7 "
        "like isthmus-l7.",
        "The machine's 2 cores are shared with other work; figures are noisy.",
    ]
    contention = machine_contention()
    if contention:
        notes.append(f"At the end of the run: {contention}.")
    if workers:
        notes.append("The --workers comparison lets the gateway use both CPUs while h2load and nghttpd keep CPU 0, so "
                     "on this machine it measures contention with the load generator more than worker scaling.")
    if failed:
        notes.append(f"{failed} requests failed across all load runs.")
    for target, reason in unavailable.items():
        notes.append(f"{target} not measured (or not in every round): {reason}")
    return {"runs": runs, "efficiency": eff, "notes": " ".join(notes)}


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table, wide enough for the figures even when stdout is not a terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("target", "met") else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    console.print(table)


def machine_contention() -> str:
    """Load average and CPU pressure (PSI) right now, to say how busy the shared machine was."""
    parts = []
    try:
        one, five, _ = os.getloadavg()
        parts.append(f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs")
    except OSError:
        pass
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        fields = dict(item.split("=", 1) for item in some[1:])
        parts.append(f"CPU pressure {float(fields['avg60']):.0f} % (tasks waiting for a CPU, PSI some avg60)")
    except (OSError, IndexError, KeyError, ValueError):
        pass
    return "; ".join(parts)


def print_report(payload: dict[str, Any]) -> None:
    eff = {(e["target"], e["body_bytes"], e["streams"]): e["efficiency"] for e in payload["efficiency"]["cpu"]}

    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    _table(
        "isthmus bench gateway (medians over rounds)",
        ["target", "body B", "streams", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "efficiency"],
        [[r["target"], r["body_bytes"], r["streams"], fmt(r["rps"], 0), fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 3),
          fmt(r["cpu_us_per_req"], 1), fmt(eff.get((r["target"], r["body_bytes"], r["streams"])), 3)]
         for r in payload["runs"]],
    )
    added = payload["efficiency"]["added_latency"]
    if added:
        _table(
            "added p50 per hop at 1 stream over direct",
            ["target", "body B", "hops", "ms/hop", "goal ms", "met"],
            [[a["target"], a["body_bytes"], a["hops"], f"{a['added_p50_ms_per_hop']:.3f}",
              fmt(a["goal_ms"], 2), {True: "yes", False: "no", None: "-"}[a["met"]]] for a in added],
        )
    workers = payload["efficiency"].get("workers")
    if workers:
        print(f"isthmus-l7 --workers 2 vs 1 (100 B x 50): {workers['rps_workers_2']:,.0f} / "
              f"{workers['rps_workers_1']:,.0f} req/s = {workers['ratio']}x")
        if workers.get("per_cpu_ratio"):
            print(f"  CPUs the gateway kept busy: {workers['cpus_busy_workers_2']} with 2 workers, "
                  f"{workers['cpus_busy_workers_1']} with 1; req/s per busy CPU: {workers['per_cpu_ratio']}x one worker's")
    print(payload["notes"])
