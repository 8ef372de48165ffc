"""Proof of the Grafana dashboards and alert rules: Debian's Prometheus scrapes two live gateways under
traffic with `rules.yml` loaded, and every PromQL expression of every panel, template variable and
rule runs through its HTTP API. Each must parse; each whose metrics exist today must return series.
Prometheus runs as the demo runs it (`prometheus_argv`), so it scrapes the gateways' protobuf
exposition: the panels' series, histograms included, come through that format.

`PENDING` lists the metrics of METRICS.md that no process exposes yet, with who will expose them.
An expression using one of them must parse and return nothing; once the metric lands, this test
fails and asks for the entry to be removed, so it tightens as metrics arrive.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import pytest
import trio

from federation.bench.metrics import PROMETHEUS_ACCEPT
from federation.dashboard.grafana_build import GRAFANA_DIR
from federation.dashboard.promconfig import RULES_FILE, prometheus_argv, render_scrape_config
from tests.conftest import free_port
from tests.integration.crossing.support import linked_control_planes
from tests.integration.dashboard.support import drive_traffic
from tests.integration.gateway.support import open_topology

PENDING = {
    # Labelled counters that exist but have no series until something happens; this test's traffic never
    # fails over, retries, times out or is denied (their own tests cover them).
    "isthmus_failover_transitions_total": "no failover in this test's traffic",
    "isthmus_retries_total": "no retry in this test's traffic",
    "isthmus_timeouts_total": "no route timeout in this test's traffic",
    "isthmus_authz_denials_total": "no authorization denial in this test's traffic",
}
SUBSTITUTIONS = {"$__rate_interval": "30s", "$service": ".*", "$instance": ".*", "$source": ".*",
                 "$destination": ".*"}  # fmt: skip
# Alert conditions compare with a scalar; `bool` keeps every series (0 or 1), so "returns series"
# means "the metrics behind the alert exist", firing or not.
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(?=[\d(])")


def pending_reason(expr: str) -> str | None:
    for name, reason in PENDING.items():
        if re.search(rf"(?<![\w:]){re.escape(name)}(?:_bucket|_sum|_count)?(?!\w)", expr) or (name.startswith("job=") and name in expr):
            return reason
    return None


def panel_expressions() -> dict[str, str]:
    out = {}
    for path in sorted(GRAFANA_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out[f"{path.name}: {panel['title']} [{target['refId']}]"] = target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
                assert match, variable
                out[f"{path.name}: variable {variable['name']}"] = f"count by ({match[2]}) ({match[1]})"
    for key, expr in out.items():
        for var, value in SUBSTITUTIONS.items():
            expr = expr.replace(var, value)
        out[key] = expr
    return out


@pytest.fixture(scope="module")
def promtool_checked():
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.fail("Debian's prometheus is not installed: apt-get install -y prometheus")
    result = subprocess.run(["promtool", "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def query(client: httpx.AsyncClient, base: str, expr: str) -> tuple[str, list]:
    body = (await client.get(f"{base}/api/v1/query", params={"query": expr})).json()
    return body["status"] + (": " + body.get("error", "") if body["status"] != "success" else ""), \
        body.get("data", {}).get("result", [])


async def test_every_panel_and_rule_runs_on_a_real_prometheus(dashboard_pki, tmp_path, promtool_checked):
    assert "SUCCESS" in promtool_checked
    async with open_topology(dashboard_pki) as topology, trio.open_nursery() as nursery:
        nursery.start_soon(drive_traffic, topology)
        # a TCP connection through east-1 and a refused handshake on west-1, so those families have series
        tcp = await trio.open_tcp_stream("127.0.0.1", topology.ports["db_outbound"])
        await tcp.send_all(b"ping")
        await tcp.receive_some(4)
        await tcp.aclose()
        bad = await trio.open_tcp_stream(*topology.west_eastwest)
        await bad.send_all(b"GET / HTTP/1.1\r\n\r\n")
        await bad.receive_some(100)
        await bad.aclose()

        admins = [f"{h}:{p}" for h, p in (topology.east.addresses["admin"], topology.west.addresses["admin"])]
        # Two linked control planes (with their own gateways): the federation metrics and the control job.
        controls = await linked_control_planes(nursery, tmp_path / "federation", dashboard_pki.dir)
        config = tmp_path / "prometheus.yml"
        config.write_text(render_scrape_config(admins, controls, rules_file=RULES_FILE, scrape_interval="1s"))
        port = free_port("127.0.0.1")
        base = f"http://127.0.0.1:{port}"
        process = await trio.lowlevel.open_process(
            prometheus_argv(config, tmp_path / "tsdb", f"127.0.0.1:{port}", "--log.level=warn"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                # A deadline, not a wait: start-up, two scrapes and a rule evaluation take ~3 s on an idle
                # machine and much longer on a loaded 2-core one.
                with trio.fail_after(60):
                    while True:
                        try:
                            if (await client.get(f"{base}/-/ready")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.1)
                    # traffic rates need two scrapes; recording rules one evaluation after that
                    while True:
                        if (await query(client, base, "isthmus:request_error_ratio:rate5m"))[1]:
                            break
                        await trio.sleep(0.25)

                # What Prometheus asks the gateways for (2.42 with native-histograms), they answer in protobuf.
                scrape = await client.get(f"http://{admins[0]}/metrics", headers={"accept": PROMETHEUS_ACCEPT})
                assert scrape.headers["content-type"].startswith("application/vnd.google.protobuf")
                rules = (await client.get(f"{base}/api/v1/rules")).json()["data"]["groups"]
                expressions = panel_expressions()
                for group in rules:
                    for rule in group["rules"]:
                        assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
                        expr = rule["query"] if rule["type"] == "recording" else COMPARISON.sub(r"\1 bool ", rule["query"])
                        expressions[f"rules.yml: {rule['name']}"] = expr
                assert sum(len(g["rules"]) for g in rules) == 13

                failures, pending_seen = [], []
                for key, expr in sorted(expressions.items()):
                    status, result = await query(client, base, expr)
                    reason = pending_reason(expr)
                    if status != "success":
                        failures.append(f"{key}: does not run: {status}\n    {expr}")
                    elif reason is None and not result:
                        failures.append(f"{key}: returns no series\n    {expr}")
                    elif reason is not None and result and "job=" not in expr:
                        failures.append(f"{key}: returns series now: remove its metric from PENDING ({reason})")
                    elif reason is not None:
                        pending_seen.append(key)
                assert not failures, "\n".join(failures)
                assert len(expressions) > 40
                assert len(pending_seen) < len(expressions)  # the rest is proven against live gateways
        finally:
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            nursery.cancel_scope.cancel()
