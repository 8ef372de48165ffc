"""GatewayConfig: defaults, the [gateway] table, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigInvalid
from registry.model import Locality

EAST = Locality("us-east", "us-east-1a")


class Contexts:
    server = client = None


def make(**kwargs):
    return GatewayConfig.from_mapping(kwargs, cluster="east-1", locality=EAST, trust_domain="mesh.example",
                                      base_dir=Path("/etc/isthmus"), contexts=Contexts())


def test_defaults_and_aliases():
    config = make()
    assert config.alias_suffixes == ("mesh.example",)
    assert config.eastwest_address == ("127.0.0.1", 15443)
    assert config.max_header_bytes == 64 * 1024


def test_gateway_table_is_read():
    config = make(catalog_file="catalog.json", tcp_ports={"15006": "db.shop"}, connect_timeout_s=0.5,
                  alias_suffixes=["mesh.example", "svc.cluster.local"])
    assert config.catalog_file == Path("/etc/isthmus/catalog.json")
    assert dict(config.tcp_ports) == {15006: "db.shop"}
    assert config.connect_timeout_s == 0.5
    assert config.alias_suffixes == ("mesh.example", "svc.cluster.local")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"connect_timeout_s": 0}, "gateway.connect_timeout_s: 0 is not a positive number of seconds"),
        ({"idle_timeout_s": "soon"}, "gateway.idle_timeout_s: 'soon' is not a positive number of seconds"),
        ({"tcp_ports": {"http": "db.shop"}}, "gateway.tcp_ports: 'http' is not a port number"),
        ({"tcp_ports": {"15006": "db"}}, "gateway.tcp_ports.15006: service: 'db' is not name.namespace"),
        ({"outbound": "10.0.0.1:15001"}, "gateway.outbound: '10.0.0.1:15001' must be a loopback address"),
        ({"admin": "localhost"}, "gateway.admin: 'localhost' is not host:port"),
        ({"colour": "blue"}, "gateway.colour: unknown setting"),
        ({"max_header_bytes": -1}, "gateway.max_header_bytes: -1 is not a positive integer"),
    ],
)
def test_bad_settings_are_one_line_naming_the_field(settings, message):
    with pytest.raises(ConfigInvalid) as info:
        make(**settings)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_tls_material_is_required():
    with pytest.raises(ConfigInvalid, match="identity and a trust bundle"):
        GatewayConfig(cluster="east-1", locality=EAST)


def test_cluster_name_is_a_label():
    with pytest.raises(ConfigInvalid, match="gateway.cluster"):
        GatewayConfig(cluster="East_1", locality=EAST, contexts=Contexts())
