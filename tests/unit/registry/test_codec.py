"""JSON encoding of catalog values: lossless round trips, and decode errors that name the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from registry import codec
from registry.errors import ValidationError
from registry.model import Endpoint, Health, Locality
from tests.unit.registry.strategies import catalogs, endpoints, exports, peers, services


@given(catalogs())
def test_catalog_round_trips_through_json_text(catalog):
    text = json.dumps(codec.catalog_to_json(catalog))
    assert codec.catalog_from_json(json.loads(text)) == catalog


@given(services)
def test_service_round_trip(value):
    assert codec.service_from_dict(codec.service_to_dict(value)) == value


@given(endpoints)
def test_endpoint_round_trip(value):
    assert codec.endpoint_from_dict(json.loads(json.dumps(codec.endpoint_to_dict(value)))) == value


@given(exports)
def test_export_round_trip(value):
    assert codec.export_from_dict(codec.export_to_dict(value)) == value


@given(peers)
def test_peer_round_trip(value):
    assert codec.peer_from_dict(codec.peer_to_dict(value)) == value


def test_locality_accepts_object_or_text():
    assert codec.locality_from_dict({"region": "us-east", "zone": "us-east-1a"}) == Locality("us-east", "us-east-1a")
    assert codec.locality_from_dict("us-east/us-east-1a") == Locality("us-east", "us-east-1a")


def _endpoint(**changes):
    data = {"service": "echo.demo", "cluster": "east-1", "address": "127.0.1.10", "port": 8080, "locality": "us-east/us-east-1a"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_minimal_endpoint_gets_defaults():
    e = codec.endpoint_from_dict(_endpoint())
    assert (e.id, e.weight, e.health, e.labels) == ("east-1/127.0.1.10:8080", 1, Health.HEALTHY, ())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "catalog.endpoints[0]: endpoint.port: 70000 is not a port number"),
        ({"port": "80"}, "endpoint.port: '80' is not a port number"),
        ({"address": None}, "catalog.endpoints[0].address: missing"),
        ({"colour": "red"}, "catalog.endpoints[0].colour: unknown field"),
        ({"health": "sick"}, "endpoint.health: 'sick' is not one of healthy"),
        ({"locality": "us-east"}, "catalog.endpoints[0].locality: locality: 'us-east' is not region/zone"),
        ({"cluster": "East_1"}, "endpoint.cluster: 'East_1' is not a DNS-1123 label"),
        ({"weight": 0}, "endpoint.weight: 0 is not an integer in 1-1000"),
        ({"labels": ["a"]}, "catalog.endpoints[0].labels: ['a'] is not an object"),
        ({"service": "echo"}, "service: 'echo' is not name.namespace"),
    ],
)
def test_bad_endpoint_names_the_field(changes, message):
    doc = {"cluster": "east-1", "endpoints": [_endpoint(**changes)]}
    with pytest.raises(ValidationError) as info:
        codec.catalog_from_json(doc)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_endpoint_ids_in_a_catalog_are_refused():
    doc = {"cluster": "east-1", "endpoints": [_endpoint(), _endpoint(weight=5)]}
    with pytest.raises(ValidationError, match=r"catalog.endpoints\[1\]: duplicate 'east-1/127.0.1.10:8080'"):
        codec.catalog_from_json(doc)


def test_mapping_form_must_use_the_values_own_key():
    doc = {"cluster": "east-1", "services": {"echo.demo": {"name": "hello", "namespace": "demo"}}}
    with pytest.raises(ValidationError, match="key does not match"):
        codec.catalog_from_json(doc)


def test_catalog_file_errors_name_the_file(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    with pytest.raises(ValidationError, match=f"{path}: not valid JSON"):
        codec.read_catalog_file(str(path))
    path.write_text(json.dumps({"cluster": "east-1", "services": [{"name": "Echo", "namespace": "demo"}]}))
    with pytest.raises(ValidationError, match=rf"{path}: catalog.services\[0\]: service.name: 'Echo'"):
        codec.read_catalog_file(str(path))
    with pytest.raises(ValidationError, match="cannot read"):
        codec.read_catalog_file(str(tmp_path / "missing.json"))


def test_catalog_file_round_trip(tmp_path):
    e = Endpoint("echo.demo", "east-1", "127.0.1.10", 8080, Locality("us-east", "us-east-1a"))
    doc = {"cluster": "east-1", "revision": 7, "endpoints": [codec.endpoint_to_dict(e)]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    catalog = codec.read_catalog_file(str(path))
    assert catalog.revision == 7 and catalog.endpoints == {e.id: e}
