"""`isthmus service` and `isthmus registry` as a user runs them: each verb, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]


def isthmus(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "federation.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def in_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command through `federation.cli.main` in this process (fast, for the many bad-input cases)."""
    import contextlib
    import io

    from federation.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def ok(cwd: Path, *args: str) -> str:
    result = isthmus(cwd, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isthmus: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path):
    assert in_process(tmp_path, "registry", "cluster", "add", "east-1", "--region", "us-east", "--zone", "us-east-1a", "--zone", "us-east-1b").returncode == 0
    return tmp_path


def listing(cwd: Path, *args: str) -> list[dict]:
    return json.loads(ok(cwd, "service", "list", "--json", *args))


def test_register_list_deregister(workdir):
    out = ok(
        workdir, "service", "register", "echo.demo", "--cluster", "east-1", "--locality", "us-east/us-east-1a",
        "--endpoint", "127.0.1.10:8080", "--endpoint", "127.0.1.11:8080", "--protocol", "http2", "--weight", "5",
        "--label", "version=v1",
    )  # fmt: skip
    assert "registered echo.demo in east-1 (us-east/us-east-1a): 127.0.1.10:8080, 127.0.1.11:8080" in out
    ok(workdir, "service", "register", "echo.demo", "--cluster", "east-1", "--locality", "us-east/us-east-1b", "--endpoint", "127.0.1.12:8080")
    rows = listing(workdir)
    assert [(r["service"], r["cluster"], r["locality"], r["healthy"], r["total"], r["protocol"]) for r in rows] == [
        ("echo.demo", "east-1", "us-east/us-east-1a", 2, 2, "http2"),
        ("echo.demo", "east-1", "us-east/us-east-1b", 1, 1, "http2"),
    ]
    table = ok(workdir, "service", "list")
    assert "echo.demo" in table and "2/2" in table and "us-east/us-east-1b" in table
    ok(workdir, "service", "deregister", "echo.demo", "--cluster", "east-1", "--endpoint", "127.0.1.10:8080")
    assert [r["total"] for r in listing(workdir)] == [1, 1]
    ok(workdir, "service", "deregister", "echo.demo", "--cluster", "east-1", "--all")
    assert listing(workdir) == []


def test_registry_status(workdir):
    status = json.loads(ok(workdir, "registry", "status", "--json"))
    assert status["backend"] == "sqlite" and status["reachable"] is True
    assert status["address"] == str(workdir / "isthmus-registry.db") and status["revision"] >= 2
    assert "sqlite" in ok(workdir, "registry", "status")
    clusters = json.loads(ok(workdir, "registry", "cluster", "list", "--json"))
    assert clusters == [{"name": "east-1", "region": "us-east", "zones": ["us-east-1a", "us-east-1b"]}]


def test_registry_url_from_config_and_flag(tmp_path):
    config = tmp_path / "west-1.toml"
    config.write_text(
        '[cluster]\nname = "west-1"\nregion = "eu-west"\nzones = ["eu-west-1a"]\n'
        f'[registry]\nurl = "sqlite:///{tmp_path / "west.db"}"\n'
    )
    # The config's cluster is declared on the way; its only zone is the default locality.
    ok(tmp_path, "service", "register", "hello.demo", "--config", str(config), "--endpoint", "127.0.3.10:8080")
    assert (tmp_path / "west.db").exists() and not (tmp_path / "isthmus-registry.db").exists()
    rows = listing(tmp_path, "--config", str(config))
    assert [(r["service"], r["cluster"], r["locality"]) for r in rows] == [("hello.demo", "west-1", "eu-west/eu-west-1a")]
    assert listing(tmp_path, "--registry", f"sqlite:///{tmp_path / 'west.db'}") == rows


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["Echo.demo", "--endpoint", "127.0.1.10:80"], ["service.name: 'Echo' is not a DNS-1123 label"]),
        (["echo", "--endpoint", "127.0.1.10:80"], ["'echo' is not name.namespace"]),
        (["echo.demo", "--endpoint", "127.0.1.10:70000"], ["--endpoint: 70000 is not a port number (1-65535)"]),
        (["echo.demo", "--endpoint", "127.0.1.10"], ["--endpoint: '127.0.1.10' is not host:port"]),
        (["echo.demo", "--endpoint", "bad_host:80"], ["--endpoint: 'bad_host' is not an IP address or DNS name"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--weight", "0"], ["endpoint.weight: 0"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--label", "novalue"], ["--label: 'novalue' is not key=value"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--ttl", "soon"], ["--ttl: 'soon' is not a duration"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--locality", "us-east"], ["locality: 'us-east' is not region/zone"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--locality", "eu-west/eu-west-1a"], ["not a locality of cluster east-1"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--cluster", "West_1"], ["--cluster: 'West_1' is not a DNS-1123 label"]),
        (["echo.demo", "--endpoint", "127.0.1.10:80", "--cluster", "west-1"], ["cluster 'west-1' is not known to the registry"]),
    ],
)
def test_register_bad_input_is_one_line(workdir, args, fragments):
    argv = ["service", "register", *args]
    if "--cluster" not in args:
        argv += ["--cluster", "east-1"]
    if "--locality" not in args:
        argv += ["--locality", "us-east/us-east-1a"]
    one_line_error(in_process(workdir, *argv), *fragments)
    assert json.loads(in_process(workdir, "service", "list", "--json").stdout) == []  # nothing half-written


def test_duplicate_endpoint_is_refused(workdir):
    base = ["service", "register", "echo.demo", "--cluster", "east-1", "--locality", "us-east/us-east-1a"]
    ok(workdir, *base, "--endpoint", "127.0.1.10:8080")
    one_line_error(
        isthmus(workdir, *base, "--endpoint", "127.0.1.11:8080", "--endpoint", "127.0.1.10:8080"),
        "endpoint.id: 'east-1/127.0.1.10:8080' is already registered",
    )
    assert [r["total"] for r in listing(workdir)] == [1]  # the new one was not written either
    one_line_error(  # also when heart-beating: refused before it starts
        isthmus(workdir, *base, "--endpoint", "127.0.1.10:8080", "--ttl", "5s"), "is already registered"
    )


def test_deregister_bad_input(workdir):
    one_line_error(
        in_process(workdir, "service", "deregister", "echo.demo", "--cluster", "east-1", "--endpoint", "127.0.1.10:8080"),
        "'east-1/127.0.1.10:8080' is not registered for echo.demo",
    )
    one_line_error(in_process(workdir, "service", "deregister", "echo.demo", "--cluster", "east-1"), "--all")
    one_line_error(
        in_process(workdir, "service", "deregister", "echo.demo", "--cluster", "nowhere", "--all"),
        "cluster 'nowhere' is not known",
    )
    one_line_error(
        in_process(workdir, "service", "deregister", "echo.demo", "--cluster", "east-1", "--endpoint", "127.0.1.10:0"),
        "--endpoint: 0 is not a port number",
    )


def test_cluster_add_and_list_bad_input(tmp_path):
    one_line_error(in_process(tmp_path, "registry", "cluster", "add", "East", "--region", "us-east", "--zone", "a"), "'East' is not a DNS-1123")
    one_line_error(in_process(tmp_path, "registry", "cluster", "add", "clusters", "--region", "us-east", "--zone", "a"), "reserved")
    one_line_error(in_process(tmp_path, "service", "list", "--cluster", "ghost"), "cluster 'ghost' is not known")


def test_bad_registry_url(tmp_path):
    one_line_error(in_process(tmp_path, "service", "list", "--registry", "mysql://db:3306"), "registry url: 'mysql://db:3306'", "unknown scheme")
    one_line_error(in_process(tmp_path, "registry", "status", "--registry", "etcd://nohostport"), "'nohostport' is not host:port")


def test_unreachable_backends(tmp_path):
    (tmp_path / "file").write_text("")
    bad_sqlite = f"sqlite:///{tmp_path / 'file' / 'registry.db'}"
    for verb in (["service", "list"], ["registry", "cluster", "list"]):
        one_line_error(isthmus(tmp_path, *verb, "--registry", bad_sqlite), "registry at", "is unavailable")
    etcd = f"etcd://127.0.0.1:{free_port()}"
    result = isthmus(tmp_path, "registry", "status", "--json", "--registry", etcd)
    one_line_error(result, f"registry at 127.0.0.1:{etcd.rsplit(':', 1)[1]} is unavailable")
    assert json.loads(result.stdout)["reachable"] is False
    one_line_error(
        isthmus(tmp_path, "service", "register", "echo.demo", "--cluster", "east-1", "--endpoint", "127.0.1.10:80", "--registry", etcd),
        "is unavailable",
    )


def test_ttl_registration_heartbeats_in_the_foreground_and_cleans_up(workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "service", "register", "echo.demo", "--cluster", "east-1",
         "--locality", "us-east/us-east-1a", "--endpoint", "127.0.1.10:8080", "--ttl", "3s"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once the endpoints are registered
        assert "heart-beating until interrupted" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        deadline = time.monotonic() + 4.5  # outlive the 3 s TTL: heart-beats keep the endpoint
        while time.monotonic() < deadline:
            assert [r["total"] for r in listing(workdir)] == [1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "deregistering 127.0.1.10:8080" in proc.stderr.read()
    assert [r["total"] for r in listing(workdir)] == [0]
