"""The control plane serves its gateways the config's `[policies]`/`[routes]` as defaults, with
values written to the registry winning, service by service; a bad default is one line at start."""

from __future__ import annotations

import pytest
import trio

from certs.testing import make_pki
from federation.config import ClusterConfig
from federation.control import ControlPlane
from federation.errors import ConfigError
from registry.model import Endpoint, Locality, Policy, Service
from registry.store import Store
from registry.testing import FakeBackend
from tests.conftest import free_port
from tests.integration.gateway.support import eventually

LOC = Locality("us-east", "us-east-1a")
ROUTES = [{"name": "v1-only", "subset": {"version": "v1"}}]


def config_with(tmp_path, pki_dir, **sections) -> ClusterConfig:
    host = "127.0.0.1"
    return ClusterConfig.from_mapping(
        {
            "cluster": {"name": "east-1", "region": "us-east", "zones": ["us-east-1a"]},
            "pki": {"dir": str(pki_dir)},
            "gateway": {"eastwest": f"{host}:{free_port(host)}", "outbound": f"{host}:{free_port(host)}",
                        "admin": f"{host}:{free_port(host)}"},
            "control": {"api": f"{host}:{free_port(host)}", "federation": f"{host}:{free_port(host)}"},
            **sections,
        },
        base_dir=tmp_path,
        source="east-1.toml",
    )


async def test_config_defaults_are_served_and_registry_values_win(tmp_path):
    pki = make_pki(tmp_path / "pki", clusters={"east-1": ("us-east", "us-east-1a")})
    config = config_with(tmp_path, pki.dir, policies={"echo.demo": {"failover": ["eu-west"]}},
                         routes={"echo.demo": ROUTES})
    backend = FakeBackend()
    store = Store(backend)
    plane = ControlPlane(config, backend, heartbeat_s=0.2)

    def served():
        return plane.catalogs.current

    async with trio.open_nursery() as nursery:
        await nursery.start(plane.serve)
        await store.add_cluster(config.cluster)
        await store.register_endpoints(Service.from_key("echo.demo"),
                                       [Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, LOC, labels={"version": "v1"})])
        await eventually(lambda: served() is not None and bool(served().endpoints), timeout_s=10)
        assert served().policies["echo.demo"].spec == {"failover": ["eu-west"]}
        assert served().routes["echo.demo"].rules[0]["name"] == "v1-only"
        await store.set_policy("east-1", Policy("echo.demo", {"failover": ["ap-south", "eu-west"]}))
        await eventually(lambda: served().policies["echo.demo"].spec["failover"] == ["ap-south", "eu-west"])
        await store.remove_policy("east-1", "echo.demo")
        # Removed from the registry: back to the config's default.
        await eventually(lambda: served().policies["echo.demo"].spec["failover"] == ["eu-west"])
        nursery.cancel_scope.cancel()


def test_a_bad_default_in_the_config_is_one_line(tmp_path):
    pki = make_pki(tmp_path / "pki", clusters={"east-1": ("us-east", "us-east-1a")})
    config = config_with(tmp_path, pki.dir, routes={"echo.demo": [{"name": "re", "match": {"path_regex": "(("}}]})
    with pytest.raises(ConfigError) as info:
        ControlPlane(config, FakeBackend())
    assert 'echo.demo route "re": match.path_regex: invalid regular expression' in str(info.value)
    assert "\n" not in str(info.value)
