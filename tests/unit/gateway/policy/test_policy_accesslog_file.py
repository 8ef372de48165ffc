"""The access-log file rotates by size, keeps the configured number of old files, and every line
in every file is a whole JSON object."""

from __future__ import annotations

import json

import pytest

from gateway.accesslog_file import RotatingLogFile
from gateway.errors import ConfigInvalid
from gateway.policy.accesslog import AccessLogConfig, AccessLogRecord, format_line


def lines(count: int, start: int = 0) -> list[str]:
    return [
        format_line(AccessLogRecord(time=1_764_000_000.0 + i, request_id=f"req-{i:03d}"))
        for i in range(start, start + count)
    ]


def test_the_file_rotates_at_max_bytes_and_keeps_the_configured_backups(tmp_path):
    path = tmp_path / "access.log"
    one_batch = len("".join(line + "\n" for line in lines(10)).encode())
    with RotatingLogFile(path, max_bytes=one_batch * 2, backups=2) as log:
        for batch in range(7):
            log.write_lines(lines(10, start=batch * 10))

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"]
    ids = {}
    for name in names:
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= one_batch * 2
        ids[name] = [json.loads(line)["request_id"] for line in text.splitlines()]
    assert ids["access.log"] == [f"req-{i:03d}" for i in range(60, 70)]
    assert ids["access.log.1"] == [f"req-{i:03d}" for i in range(40, 60)]
    assert ids["access.log.2"] == [f"req-{i:03d}" for i in range(20, 40)]  # the oldest were dropped


def test_no_backups_means_the_file_starts_over(tmp_path):
    path = tmp_path / "access.log"
    with RotatingLogFile(path, max_bytes=4096, backups=0) as log:
        for batch in range(30):
            log.write_lines(lines(5, start=batch * 5))
    assert [p.name for p in tmp_path.iterdir()] == ["access.log"]
    assert path.stat().st_size <= 4096


def test_an_existing_file_is_appended_to_and_counted(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(lines(1)[0] + "\n")
    with RotatingLogFile(path, max_bytes=1 << 20, backups=1) as log:
        assert log.size == path.stat().st_size
        log.write_lines(lines(1, start=1))
    assert len(path.read_text().splitlines()) == 2


def test_an_unwritable_path_is_a_one_line_config_error(tmp_path):
    config = AccessLogConfig.from_mapping({"path": str(tmp_path / "missing" / "access.log")})
    with pytest.raises(ConfigInvalid) as caught:
        RotatingLogFile.from_config(config)
    assert str(caught.value) == f"access_log.path: cannot open {config.path!r}: No such file or directory"
    with pytest.raises(ConfigInvalid, match="^access_log.path: '-' is stdout, not a file$"):
        RotatingLogFile.from_config(AccessLogConfig())
