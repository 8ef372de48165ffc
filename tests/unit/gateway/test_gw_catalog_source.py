"""The catalog file source: first read must succeed; later bad versions keep the last good catalog."""

from __future__ import annotations

import json
import os

import pytest
import trio

from gateway.catalog_source import FileCatalogSource, read_catalog
from gateway.errors import ConfigInvalid

GOOD = {"cluster": "east-1", "revision": 1,
        "services": [{"name": "echo", "namespace": "demo", "protocol": "http", "ports": [8080]}]}


def write(path, value, mtime_ns):
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_json_and_toml_catalogs_read_the_same(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(GOOD))
    (tmp_path / "c.toml").write_text(
        'cluster = "east-1"\nrevision = 1\n[[services]]\nname = "echo"\nnamespace = "demo"\n'
        'protocol = "http"\nports = [8080]\n')
    assert read_catalog(tmp_path / "c.json") == read_catalog(tmp_path / "c.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"revision": 1}', "cluster"),
        (json.dumps({**GOOD, "services": [{"name": "Echo", "namespace": "demo"}]}), "services[0]"),
    ],
)
def test_bad_catalog_file_is_one_line_naming_file_and_field(tmp_path, text, message):
    path = tmp_path / "catalog.json"
    path.write_text(text)
    with pytest.raises(ConfigInvalid) as info:
        read_catalog(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(ConfigInvalid, match="cannot read catalog"):
        read_catalog(tmp_path / "none.json")


async def test_reload_on_change_and_last_known_good(tmp_path, autojump_clock, caplog):
    path = tmp_path / "catalog.json"
    write(path, GOOD, 1_000_000_000)
    source = FileCatalogSource(path, poll_interval_s=1.0)
    seen = []

    async def follow():
        async for catalog in source:
            seen.append((trio.current_time(), catalog.revision))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(0.5)
        assert [rev for _, rev in seen] == [1]
        write(path, "{ broken", 2_000_000_000)
        await trio.sleep(1.0)
        assert [rev for _, rev in seen] == [1]  # the broken file is skipped
        assert "catalog reload failed, keeping revision 1" in caplog.text
        write(path, {**GOOD, "revision": 2}, 3_000_000_000)
        await trio.sleep(1.0)
        assert [rev for _, rev in seen] == [1, 2]
        assert seen[1][0] == pytest.approx(2.0)  # picked up on the next poll
        nursery.cancel_scope.cancel()
