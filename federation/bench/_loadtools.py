"""Process management for load benchmarks: the upstream (nghttpd), the proxies under test (HAProxy,
Isthmus gateways), the load generator (h2load), CPU pinning and CPU accounting.

Owns: starting long-lived servers pinned to chosen CPUs, each in its own session so that it and any
workers it forks are stopped by process-group id when the benchmark ends (Ctrl-C included); waiting
for readiness by polling a TCP port under a deadline; reading a process tree's CPU time; running
h2load once and parsing its summary and per-request log; building the small `LD_PRELOAD` library
that lets h2load present a client certificate.

Pure helpers (`parse_h2load_summary`, `percentile`, `read_latencies_us`) take text or numbers and do
no I/O beyond the file they are given. Nothing here knows about Isthmus: it must not import
`gateway`, `registry` or `certs`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs
import psutil
import trio

from federation.errors import FederationError


class LoadToolError(FederationError):
    """A load tool is missing, will not start, or produced output that cannot be read."""


# --------------------------------------------------------------------------- tools

TOOL_PACKAGES = {"h2load": "nghttp2-client", "nghttpd": "nghttp2-server", "haproxy": "haproxy", "taskset": "util-linux"}


def find_tool(name: str) -> str:
    """The absolute path of a load tool, or a one-line error naming the Debian package."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise LoadToolError(f"{name}: not found on PATH (apt-get install -y {package})")
    return path


def missing_tools(names: Iterable[str]) -> list[str]:
    """The subset of `names` that cannot be found (for skipping tests with a reason)."""
    out = []
    for name in names:
        try:
            find_tool(name)
        except LoadToolError:
            out.append(name)
    return out


# h2load has no client-certificate option. This library wraps OpenSSL's SSL_CTX_new so every
# context h2load makes presents the certificate named in the environment, offers only the TLS 1.3
# suite named there (so every server negotiates the same cipher), and verifies the server's chain
# against the bundle (not its name: targets present different identities).
CLIENT_CERT_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/ssl.h>

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real)(const SSL_METHOD *) = NULL;
    if (!real) real = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("ISTHMUS_BENCH_CLIENT_CERT");
    const char *key = getenv("ISTHMUS_BENCH_CLIENT_KEY");
    const char *ca = getenv("ISTHMUS_BENCH_CA_FILE");
    const char *suites = getenv("ISTHMUS_BENCH_TLS13_SUITES");
    if (ctx && cert && key) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            fprintf(stderr, "client-certificate shim: cannot load %s / %s\n", cert, key);
            exit(97);
        }
    }
    if (ctx && ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            fprintf(stderr, "client-certificate shim: cannot load CA file %s\n", ca);
            exit(97);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (ctx && suites && SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
        fprintf(stderr, "client-certificate shim: bad TLS 1.3 suites %s\n", suites);
        exit(97);
    }
    return ctx;
}
"""


async def build_client_cert_shim(work_dir: Path) -> Path:
    """Compile the client-certificate shim with the system C compiler and OpenSSL headers.

    Raises `LoadToolError` (one line) when gcc or libssl-dev is missing.
    """
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise LoadToolError("gcc: not found (apt-get install -y gcc libssl-dev) for the client-certificate shim")
    source = work_dir / "client_cert_shim.c"
    library = work_dir / "client_cert_shim.so"
    source.write_text(CLIENT_CERT_SHIM_C)
    result = await trio.run_process(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl", "-lssl"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        first = (result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        raise LoadToolError(f"client-certificate shim: cannot build ({first}); apt-get install -y libssl-dev")
    return library


# --------------------------------------------------------------------------- CPU accounting


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the processes `pids` and all their live descendants."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def pin_argv(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """`argv` run under `taskset -c` (the process and everything it forks stay on `cpus`)."""
    if not cpus:
        return list(argv)
    return [find_tool("taskset"), "-c", ",".join(str(c) for c in cpus), *argv]


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- servers


@attrs.define
class Server:
    """One long-lived process the benchmark started (it leads its own process group)."""

    name: str
    process: trio.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class ProcessGroup:
    """Servers started for one benchmark, all stopped on `aclose()` (SIGTERM, then SIGKILL).

    Use as `async with ProcessGroup(log_dir) as group:`; leaving the block, normally, by an
    error or by Ctrl-C, stops every process group this object started and nothing else.
    """

    def __init__(self, log_dir: Path, *, stop_timeout_s: float = 3.0) -> None:
        self.log_dir = Path(log_dir)
        self.stop_timeout_s = stop_timeout_s
        self.servers: list[Server] = []

    async def __aenter__(self) -> ProcessGroup:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: Sequence[int] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_port: tuple[str, int] | None = None,
        ready_timeout_s: float = 15.0,
    ) -> Server:
        """Start `argv` pinned to `cpus`; when `ready_port` is given, return once it accepts."""
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        try:
            process = await trio.lowlevel.open_process(
                pin_argv(argv, cpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        server = Server(name, process, log_path)
        self.servers.append(server)
        if ready_port is not None:
            await wait_for_port(server, ready_port, ready_timeout_s)
        return server

    async def stop(self, server: Server) -> None:
        """Stop one server's process group: SIGTERM, then SIGKILL after the timeout."""
        with trio.CancelScope(shield=True):
            if server.process.returncode is None:
                _signal_group(server.pid, signal.SIGTERM)
                with trio.move_on_after(self.stop_timeout_s):
                    await server.process.wait()
            # Workers may outlive their parent: the whole group goes.
            _signal_group(server.pid, signal.SIGKILL)
            if server.process.returncode is None:
                await server.process.wait()
        if server in self.servers:
            self.servers.remove(server)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for server in reversed(list(self.servers)):
                await self.stop(server)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        # Gone already, or the id now belongs to a process that is not ours: leave it alone.
        pass


async def wait_for_port(server: Server, address: tuple[str, int], timeout_s: float) -> None:
    """Poll until `address` accepts a TCP connection; fail early if the server exits."""
    host, port = address
    with trio.move_on_after(timeout_s):
        while True:
            if server.process.returncode is not None:
                raise LoadToolError(
                    f"{server.name}: exited with status {server.process.returncode} before listening on "
                    f"{host}:{port} ({server.log_tail() or 'no output'}; log {server.log_path})"
                )
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return
    raise LoadToolError(f"{server.name}: not listening on {host}:{port} after {timeout_s:g} s (log {server.log_path})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- h2load


@attrs.frozen
class H2loadSummary:
    """What h2load's summary says about one run."""

    duration_s: float
    rps: float
    total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int


_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx", re.M)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load_summary(text: str) -> H2loadSummary:
    """Parse h2load's stdout; `LoadToolError` if the summary lines are not there."""
    finished, requests, status = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if not (finished and requests and status):
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise LoadToolError(f"h2load: no summary in its output ({last})")
    total, _started, done, succeeded, failed, errored, timeout = (int(g) for g in requests.groups())
    return H2loadSummary(
        duration_s=float(finished.group(1)) * _UNITS[finished.group(2)],
        rps=float(finished.group(3)),
        total=total,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=int(status.group(1)),
    )


def read_latencies_us(path: Path) -> list[int]:
    """Durations (µs) of the successful (2xx) requests in an h2load `--log-file`."""
    out: list[int] = []
    with Path(path).open() as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                out.append(int(parts[2]))
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@attrs.frozen
class LoadResult:
    summary: H2loadSummary
    p50_ms: float
    p99_ms: float


def h2load_argv(
    url: str,
    *,
    connections: int,
    streams: int,
    duration_s: float | None = None,
    requests: int | None = None,
    connect_to: str | None = None,
    headers: Sequence[str] = (),
    log_file: Path | None = None,
    h2c: bool = False,
) -> list[str]:
    argv = [find_tool("h2load"), "-c", str(connections), "-m", str(streams), "-t", "1"]
    if duration_s is not None:
        argv += ["-D", f"{max(1, round(duration_s * 1000))}ms"]  # h2load takes whole units
    else:
        argv += ["-n", str(requests or connections * streams)]
    if connect_to:
        argv.append(f"--connect-to={connect_to}")
    for header in headers:
        argv += ["-H", header]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    if h2c:
        argv += ["-p", "h2c"]
    argv.append(url)
    return argv


async def run_h2load(
    argv: Sequence[str],
    *,
    cpus: Sequence[int] | None,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Run h2load to completion (killed if cancelled) and return its summary and latency percentiles."""
    if log_file is not None:
        log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    try:
        try:
            with trio.fail_after(timeout_s):
                result = await trio.run_process(
                    pin_argv(argv, cpus),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env={**os.environ, **(env or {})},
                )
        except trio.TooSlowError:
            raise LoadToolError(f"h2load: no result after {timeout_s:g} s (the target stopped answering)") from None
        text = result.stdout.decode(errors="replace")
        if result.returncode != 0 and not _FINISHED.search(text):
            err = (result.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise LoadToolError(f"h2load: exited with status {result.returncode} ({err})")
        summary = parse_h2load_summary(text)
        p50 = p99 = math.nan
        if log_file is not None and log_file.exists():
            latencies = sorted(read_latencies_us(log_file))
            p50, p99 = percentile(latencies, 50) / 1000.0, percentile(latencies, 99) / 1000.0
    finally:
        if log_file is not None:
            log_file.unlink(missing_ok=True)
    return LoadResult(summary, p50, p99)
