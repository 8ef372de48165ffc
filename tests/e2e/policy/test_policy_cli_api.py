"""`isthmus service routes|policy --config` as an operator runs them against a running control plane:
the writes go through its API (validated there, refused in one line with the rule named, nothing
written), `--show` prints what is stored, a control plane that is down is one line, and `--registry`
still writes the registry directly without one."""

from __future__ import annotations

import json

import pytest

from certs.testing import make_pki
from tests.e2e.federation.test_cluster_cli import CLUSTERS, start_control, stop, write_config
from tests.e2e.registry.test_cli_registry import in_process, isthmus, one_line_error

GOOD = """
[[rules]]
name = "canary"
match = { path_prefix = "/" }
split = [ { subset = { version = "v1" }, weight = 90 }, { subset = { version = "v2" }, weight = 10 } ]
"""
HEADER = """
[[rules]]
name = "tag"
match = { path_prefix = "/api", method = ["GET"] }
response_headers = { add = { x-route = "api" } }
"""
BAD_WEIGHTS = """
[[rules]]
name = "canary"
split = [ { subset = { version = "v1" }, weight = 90 }, { subset = { version = "v2" }, weight = 5 } ]
"""


@pytest.fixture
def cluster(tmp_path):
    make_pki(tmp_path / "pki", clusters={"east-1": CLUSTERS["east-1"]})
    config = write_config(tmp_path, "east-1")
    for version, port in (("v1", 9001), ("v2", 9002)):
        done = in_process(tmp_path, "service", "register", "checkout.shop", "--config", str(config),
                          "--endpoint", f"127.0.1.10:{port}", "--label", f"version={version}")  # fmt: skip
        assert done.returncode == 0, done.stderr
    for name, text in (("good.toml", GOOD), ("header.toml", HEADER), ("weights.toml", BAD_WEIGHTS)):
        (tmp_path / name).write_text(text)
    control = start_control(config)
    try:
        yield tmp_path, str(config), control
    finally:
        stop(control)


def shown(workdir, config: str) -> dict:
    done = in_process(workdir, "service", "routes", "checkout.shop", "--show", "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_route_rules_through_the_control_plane(cluster):
    workdir, config, _ = cluster
    done = isthmus(workdir, "service", "routes", "checkout.shop", "--file", "good.toml", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("checkout.shop: 1 route rule(s) set in east-1 (revision ")
    stored = shown(workdir, config)
    assert stored["stored"] is True and [rule["name"] for rule in stored["rules"]] == ["canary"]

    one_line_error(in_process(workdir, "service", "routes", "checkout.shop", "--file", "weights.toml", "--config", config),
                   'checkout.shop route "canary": weights sum to 95, not 100')  # fmt: skip
    one_line_error(in_process(workdir, "service", "routes", "payments.shop", "--file", "good.toml", "--config", config),
                   'payments.shop route "canary": no such service in the catalog')  # fmt: skip
    one_line_error(in_process(workdir, "service", "routes", "checkout.shop", "--file", "good.toml", "--config", config,
                              "--cluster", "west-1"),
                   "--cluster: west-1 is not the cluster of")  # fmt: skip
    assert shown(workdir, config) == stored  # every refusal left the rules and the revision as they were

    table = in_process(workdir, "service", "routes", "checkout.shop", "--show", "--config", config)
    assert table.returncode == 0
    assert "route rules of checkout.shop in east-1" in table.stdout and "canary" in table.stdout
    assert "version" in table.stdout and "90" in table.stdout

    done = in_process(workdir, "service", "routes", "checkout.shop", "--file", "header.toml", "--config", config)
    assert done.returncode == 0, done.stderr
    assert shown(workdir, config)["rules"][0]["response_headers"] == {"add": {"x-route": "api"}}
    done = in_process(workdir, "service", "routes", "checkout.shop", "--remove", "--config", config)
    assert done.returncode == 0 and "route rules removed from east-1" in done.stdout
    done = in_process(workdir, "service", "routes", "checkout.shop", "--show", "--config", config)
    assert "no route rules stored in east-1" in done.stdout


def test_a_policy_through_the_control_plane_keeps_options_not_given(cluster):
    workdir, config, _ = cluster
    done = in_process(workdir, "service", "policy", "checkout.shop", "--failover", "eu-west,us-west",
                      "--outlier-consecutive-5xx", "3", "--config", config)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "checkout.shop: policy set in east-1, failover eu-west, us-west" in done.stdout
    done = in_process(workdir, "service", "policy", "checkout.shop", "--retry-attempts", "2", "--config", config)
    assert done.returncode == 0, done.stderr
    policy = json.loads(in_process(workdir, "service", "policy", "checkout.shop", "--show", "--json",
                                   "--config", config).stdout)["policy"]  # fmt: skip
    assert policy == {"failover": ["eu-west", "us-west"], "outlier": {"consecutive_5xx": 3}, "retry": {"attempts": 2}}
    one_line_error(in_process(workdir, "service", "policy", "checkout.shop", "--outlier-consecutive-5xx", "-1",
                              "--config", config),
                   'policy "checkout.shop": outlier.consecutive_5xx: -1 is not an integer >= 0')  # fmt: skip
    one_line_error(in_process(workdir, "service", "policy", "payments.shop", "--failover", "eu-west", "--config", config),
                   "payments.shop: no such service in cluster east-1")  # fmt: skip
    table = in_process(workdir, "service", "policy", "checkout.shop", "--show", "--config", config)
    assert "outlier.consecutive_5xx" in table.stdout and "eu-west, us-west" in table.stdout
    done = in_process(workdir, "service", "policy", "checkout.shop", "--remove", "--config", config)
    assert done.returncode == 0 and "policy removed from east-1" in done.stdout


def test_a_control_plane_that_is_down_is_one_line_and_registry_writes_directly(cluster):
    workdir, config, control = cluster
    stop(control)
    line = one_line_error(isthmus(workdir, "service", "routes", "checkout.shop", "--file", "good.toml", "--config", config),
                          "control plane of east-1 at", "is not reachable")  # fmt: skip
    assert "Traceback" not in line
    one_line_error(in_process(workdir, "service", "policy", "checkout.shop", "--show", "--config", config),
                   "is not reachable", f"is `isthmus control --config {config}` running?")  # fmt: skip
    # Bootstrapping without a control plane: --registry writes the registry itself, with the same checks.
    registry = f"sqlite:///{workdir / 'data' / 'east-1' / 'registry.db'}"
    done = in_process(workdir, "service", "routes", "checkout.shop", "--file", "good.toml", "--config", config,
                      "--registry", registry)  # fmt: skip
    assert done.returncode == 0, done.stderr
    one_line_error(in_process(workdir, "service", "routes", "checkout.shop", "--file", "weights.toml", "--config", config,
                              "--registry", registry),
                   'checkout.shop route "canary": weights sum to 95, not 100')  # fmt: skip
    done = in_process(workdir, "service", "routes", "checkout.shop", "--show", "--json", "--config", config,
                      "--registry", registry)  # fmt: skip
    assert [rule["name"] for rule in json.loads(done.stdout)["rules"]] == ["canary"]
