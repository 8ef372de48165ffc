#!/usr/bin/env python3
"""A stand-in for the `isthmus` command line, speaking exactly the contract the Terraform provider uses.

It keeps its state in `<dir>/fake-state.json` (a cluster's config is `<dir>/<name>.toml`, so commands
that take `--config` find the directory), appends every call to `<dir>/calls.log`, and starts one
real `sleep` process per cluster so that "destroy leaves no process behind" can be checked. Failures
follow the real contract: one line `isthmus: error: ...` on stderr and exit status 2. Setting
FAKE_ISTHMUS_FAIL to a verb ("demo up", "service export", ...) makes that verb fail.
Standard library only: Terraform's provider runs it with whatever python3 is on PATH.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

TOPOLOGY = {
    "east-1": ("us-east", ["us-east-1a", "us-east-1b"], 1),
    "east-2": ("us-east", ["us-east-1c"], 2),
    "west-1": ("eu-west", ["eu-west-1a"], 3),
}
SERVICES = {
    "east-1": ["echo.demo"],
    "east-2": ["echo.demo", "greeter.demo"],
    "west-1": ["echo.demo", "hello.demo", "greeter.demo"],
}


def fail(message: str) -> None:
    print(f"isthmus: error: {message}", file=sys.stderr)
    sys.exit(2)


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def load(directory: Path) -> dict:
    path = directory / "fake-state.json"
    return json.loads(path.read_text()) if path.exists() else {"backend": "sqlite", "clusters": {}}


def save(directory: Path, state: dict) -> None:
    (directory / "fake-state.json").write_text(json.dumps(state, indent=2))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cluster_of(config: str | None) -> tuple[Path, dict, str]:
    if config is None:
        fail("--config is required")
    path = Path(config)
    if not path.exists():
        fail(f"{config}: no such file")
    directory = path.parent
    state = load(directory)
    name = path.stem
    if name not in state["clusters"]:
        fail(f"{config}: cluster {name} is not running (connection refused to its control plane)")
    return directory, state, name


def status_json(directory: Path, state: dict) -> dict | None:
    if not state["clusters"]:
        return None
    clusters, endpoints = [], []
    for name, entry in sorted(state["clusters"].items()):
        region, zones, n = TOPOLOGY[name]
        host = f"127.0.{n}.1"
        clusters.append(
            {
                "name": name, "region": region, "zones": zones, "config": str(directory / f"{name}.toml"),
                "pki_dir": str(directory / "pki"), "outbound": f"{host}:15001", "eastwest": f"{host}:15443",
                "admin": f"{host}:15000", "control": f"{host}:15010", "pids": [entry["pid"]],
            }
        )  # fmt: skip
        for service in SERVICES[name]:
            endpoints.append(
                {
                    "service": service,
                    "cluster": name,
                    "zone": zones[0],
                    "address": f"127.0.{n}.10:8080",
                    "pid": entry["pid"],
                }
            )
    return {
        "dir": str(directory),
        "backend": state["backend"],
        "dashboard": "",
        "prometheus": "",
        "clusters": clusters,
        "endpoints": endpoints,
    }


def main(argv: list[str]) -> None:
    verb = " ".join(argv[:2])
    directory = option(argv, "--dir")
    log_dir = Path(directory) if directory else Path(option(argv, "--config", ".")).parent
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "calls.log", "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)  # one command at a time, as one control plane would serialise them
        log.write(" ".join(argv) + "\n")
        log.flush()
        run(argv, verb, directory)


def run(argv: list[str], verb: str, directory: str | None) -> None:
    if os.environ.get("FAKE_ISTHMUS_FAIL") == verb:
        fail(f"{verb}: 127.0.1.1:15443 is taken by another program (pid 4242)")

    if verb == "demo up":
        path = Path(directory).resolve()
        state = load(path)
        if state["clusters"] and state["backend"] != option(argv, "--backend", "sqlite"):
            fail(f"a demo with backend {state['backend']} is already running in {path}")
        state["backend"] = option(argv, "--backend", "sqlite")
        for name in option(argv, "--clusters").split(","):
            if name not in TOPOLOGY:
                fail(f"--clusters: unknown cluster {name!r}")
            if name in state["clusters"] and alive(state["clusters"][name]["pid"]):
                continue
            sleeper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            state["clusters"][name] = {"pid": sleeper.pid, "peers": [], "exports": {}, "policies": {}}
            (path / f"{name}.toml").write_text(f'[cluster]\nname = "{name}"\n')
        save(path, state)
        print(f"demo in {path}: up", file=sys.stderr)
    elif verb == "demo down":
        path = Path(directory).resolve()
        state = load(path)
        names = option(argv, "--clusters", ",".join(state["clusters"])).split(",")
        for name in names:
            entry = state["clusters"].pop(name, None)
            if entry is not None and alive(entry["pid"]):
                os.kill(entry["pid"], signal.SIGTERM)
            for other in state["clusters"].values():
                other["peers"] = [p for p in other["peers"] if p != name]
        save(path, state)
    elif verb == "demo status":
        path = Path(directory).resolve()
        print(json.dumps(status_json(path, load(path)) if path.exists() else None))
    elif verb == "cluster token":
        _, _, name = cluster_of(option(argv, "--config"))
        print(f"tok.{name}.{option(argv, '--for')}")
    elif verb == "cluster register":
        path, state, name = cluster_of(option(argv, "--config"))
        _, issuer, redeemer = option(argv, "--token").split(".")
        if redeemer != name:
            fail(f"--token: this token is for {redeemer}, not {name}")
        for here, there in ((name, issuer), (issuer, name)):
            if there not in state["clusters"][here]["peers"]:
                state["clusters"][here]["peers"].append(there)
        save(path, state)
    elif verb == "cluster list":
        _, state, name = cluster_of(option(argv, "--config"))
        print(json.dumps([{"name": p, "state": "synced"} for p in state["clusters"][name]["peers"]]))
    elif verb == "cluster remove":
        path, state, name = cluster_of(option(argv, "--config"))
        if argv[2] not in state["clusters"][name]["peers"]:
            fail(f"{argv[2]} is not a peer of {name}")
        state["clusters"][name]["peers"].remove(argv[2])
        save(path, state)
    elif verb in ("service export", "service policy"):
        path, state, name = cluster_of(option(argv, "--config"))
        service = argv[2]
        table = state["clusters"][name]["exports" if verb == "service export" else "policies"]
        if "--remove" in argv:
            table.pop(service, None)
        else:
            value = option(argv, "--to" if verb == "service export" else "--failover")
            table[service] = [v for v in value.split(",") if v]
        save(path, state)
    elif verb == "service routes":
        path, state, name = cluster_of(option(argv, "--config"))
        service = argv[2]
        table = state["clusters"][name].setdefault("routes", {})
        if "--show" in argv:
            if service not in table and service not in SERVICES[name]:
                fail(f"{service}: no such service in cluster {name} (neither registered nor imported)")
            print(json.dumps({"cluster": name, "service": service, "rules": table.get(service, []),
                              "stored": service in table, "revision": 1}))  # fmt: skip
        elif "--remove" in argv:
            table.pop(service, None)
        else:
            rules = json.loads(Path(option(argv, "--file")).read_text())["rules"]
            for rule in rules:  # two of the control plane's checks, with its wording
                if service not in SERVICES[name]:
                    fail(f'{service} route "{rule["name"]}": no such service in the catalog')
                total = sum(arm["weight"] for arm in rule.get("split", [])) if "split" in rule else 100
                if total != 100:
                    fail(f'{service} route "{rule["name"]}": weights sum to {total}, not 100')
            table[service] = rules
        save(path, state)
    elif verb == "service list":
        _, state, name = cluster_of(option(argv, "--config"))
        entry = state["clusters"][name]
        print(json.dumps([
            {"service": s, "cluster": name, "locality": f"{TOPOLOGY[name][0]}/{TOPOLOGY[name][1][0]}",
             "exported_to": entry["exports"].get(s, []), "failover": entry["policies"].get(s, []),
             "healthy": 1, "total": 1, "protocol": "http"}
            for s in SERVICES[name]
        ]))  # fmt: skip
    else:
        fail(f"the fake isthmus does not know {verb!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
