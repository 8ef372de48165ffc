"""`isthmus service policy` and `isthmus service routes` as an operator runs them: written to the
registry, read back by `service list --json`, bad input refused in one line with the stored rules
untouched."""

from __future__ import annotations

import json

import pytest

from tests.e2e.registry.test_cli_registry import in_process, isthmus, one_line_error

GOOD = """
[[rules]]
name = "canary"
match = { path_prefix = "/" }
split = [ { subset = { version = "v1" }, weight = 90 }, { subset = { version = "v2" }, weight = 10 } ]
"""
BAD = {
    "regex.toml": ('[[rules]]\nname = "re"\nmatch = { path_regex = "/a([" }\n',
                   'checkout.shop route "re": match.path_regex: invalid regular expression'),
    "weights.toml": ('[[rules]]\nname = "canary"\nsplit = [ { subset = { version = "v1" }, weight = 90 },'
                     ' { subset = { version = "v2" }, weight = 5 } ]\n',
                     'checkout.shop route "canary": weights sum to 95, not 100'),
    "subset.toml": ('[[rules]]\nname = "v3"\nsubset = { version = "v3" }\n',
                    'checkout.shop route "v3": subset version=v3 matches no endpoint of checkout.shop'),
    "header.toml": ('[[rules]]\nname = "hdr"\nrequest_headers = { add = { "bad header" = "x" } }\n',
                    'checkout.shop route "hdr": request_headers.add: header name'),
    "broken.toml": ("[[rules]\n", "not valid TOML"),
}


@pytest.fixture
def workdir(tmp_path):
    assert in_process(tmp_path, "registry", "cluster", "add", "east-1", "--region", "us-east",
                      "--zone", "us-east-1a").returncode == 0
    for version, port in (("v1", 9001), ("v2", 9002)):
        done = in_process(tmp_path, "service", "register", "checkout.shop", "--cluster", "east-1",
                          "--endpoint", f"127.0.0.1:{port}", "--label", f"version={version}")
        assert done.returncode == 0, done.stderr
    return tmp_path


def _stored_rules(workdir):
    import trio

    from registry.store import Store
    from registry.url import DEFAULT_URL, open_backend

    async def read():
        async with open_backend(DEFAULT_URL) as backend:
            return (await Store(backend).load_catalog("east-1")).routes

    import os

    old = os.getcwd()
    os.chdir(workdir)
    try:
        return trio.run(read)
    finally:
        os.chdir(old)


def test_failover_policy_is_written_and_listed_then_removed(workdir):
    done = isthmus(workdir, "service", "policy", "checkout.shop", "--failover", "eu-west,us-west",
                   "--outlier-consecutive-5xx", "3", "--cluster", "east-1")
    assert done.returncode == 0, done.stderr
    assert "failover eu-west, us-west" in done.stdout
    rows = json.loads(in_process(workdir, "service", "list", "--json").stdout)
    assert rows[0]["failover"] == ["eu-west", "us-west"]
    assert in_process(workdir, "service", "policy", "checkout.shop", "--remove", "--cluster", "east-1").returncode == 0
    rows = json.loads(in_process(workdir, "service", "list", "--json").stdout)
    assert rows[0]["failover"] == []


def test_a_bad_policy_is_one_line(workdir):
    one_line_error(in_process(workdir, "service", "policy", "checkout.shop", "--outlier-consecutive-5xx", "-1",
                              "--cluster", "east-1"),
                   'policy "checkout.shop": outlier.consecutive_5xx: -1 is not an integer >= 0')


def test_bad_route_files_are_refused_and_the_stored_rules_stay(workdir):
    (workdir / "good.toml").write_text(GOOD)
    done = isthmus(workdir, "service", "routes", "checkout.shop", "--file", "good.toml", "--cluster", "east-1")
    assert done.returncode == 0, done.stderr
    stored = _stored_rules(workdir)
    assert stored["checkout.shop"].rules[0]["name"] == "canary"
    for name, (text, fragment) in BAD.items():
        (workdir / name).write_text(text)
        one_line_error(in_process(workdir, "service", "routes", "checkout.shop", "--file", name,
                                  "--cluster", "east-1"), fragment)
    (workdir / "other.toml").write_text(GOOD)
    one_line_error(in_process(workdir, "service", "routes", "payments.shop", "--file", "other.toml",
                              "--cluster", "east-1"), 'payments.shop route "canary": no such service in the catalog')
    assert _stored_rules(workdir) == stored  # untouched by every refusal
    assert in_process(workdir, "service", "routes", "checkout.shop", "--remove", "--cluster", "east-1").returncode == 0
    assert _stored_rules(workdir) == {}
