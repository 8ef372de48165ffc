"""Access logs: the record of one request (or one TCP connection), its JSON line, and the sampling decision.

One JSON object per line, every configured field always present (`null` when unknown), so a
single failed request can be found with `jq` by request id or trace id at each gateway it crossed.
The gateway fills an `AccessLogRecord` as the request goes (it is mutable for that reason), asks
`AccessLogConfig.should_log()`, and writes `format_line()`'s text where the config says (stdout,
or `gateway.accesslog_file` for a rotating file). Formatting is pure: the record carries its own
`time` (seconds since the epoch, taken by the gateway from its clock).

Sampling keeps a fraction `sample_rate` of requests. It is decided from the trace id when the
record has one, so every gateway on a request's path makes the same choice and a sampled request
appears in all their logs; without a trace id the caller's `random.Random` decides. Errors (5xx,
or any `reason`) are logged whatever the rate unless `always_log_errors` is off: the point of a
sampled log is still to find the request that failed.

Pure: must not import trio, socket, time or `federation`.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import operator
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from gateway.errors import ConfigInvalid

KINDS = ("http", "tcp")
ALL_FIELDS = (
    "time",
    "kind",
    "gateway",
    "listener",
    "request_id",
    "trace_id",
    "source_identity",
    "source_cluster",
    "method",
    "authority",
    "path",
    "route",
    "destination_service",
    "destination_cluster",
    "endpoint",
    "locality_priority",
    "attempts",
    "response_code",
    "reason",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_duration_ms",
)
CONFIG_KEYS = ("fields", "sample_rate", "always_log_errors", "path", "max_bytes", "backups")
STDOUT = "-"


@attrs.define(slots=True)
class AccessLogRecord:
    """What one gateway saw of one request (`kind="http"`) or one TCP connection (`kind="tcp"`).

    `time` is when the request arrived, in seconds since the epoch; `locality_priority` is the
    balancer's priority level of the endpoint used (0 = the caller's own zone); `attempts` counts
    every try; byte counts are bodies (HTTP) or the stream (TCP), `bytes_in` from the client.
    """

    time: float
    kind: str = "http"
    gateway: str | None = None
    listener: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    source_identity: str | None = None
    source_cluster: str | None = None
    method: str | None = None
    authority: str | None = None
    path: str | None = None
    route: str | None = None
    destination_service: str | None = None
    destination_cluster: str | None = None
    endpoint: str | None = None
    locality_priority: int | None = None
    attempts: int = 0
    response_code: int | None = None
    reason: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float | None = None
    upstream_duration_ms: float | None = None

    @property
    def is_error(self) -> bool:
        return (self.response_code is not None and self.response_code >= 500) or bool(self.reason)


def _rfc3339(seconds: float, cache: list[tuple[int | None, str]]) -> str:
    # The formatted second is cached as one (second, text) tuple: a single atomic swap.
    whole = math.floor(seconds)
    cached, stamp = cache[0]
    if cached != whole:
        stamp = datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cache[0] = (whole, stamp)
    millis = min(999, int((seconds - whole) * 1000))
    return f"{stamp}.{millis:03d}Z"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_TIME_CACHE: list[tuple[int | None, str]] = [(None, "")]


_DURATIONS = ("duration_ms", "upstream_duration_ms")


@functools.lru_cache(maxsize=32)
def _getter(fields: tuple[str, ...]) -> Callable[[AccessLogRecord], tuple[Any, ...]]:
    getter = operator.attrgetter(*fields)
    return getter if len(fields) > 1 else lambda record: (getter(record),)


def format_line(record: AccessLogRecord, fields: tuple[str, ...] = ALL_FIELDS) -> str:
    """The record as one JSON object on one line (no newline), keys in `fields` order, all present.

    `time` becomes RFC 3339 UTC with milliseconds; durations are rounded to the microsecond and
    a non-finite one is `null`.
    """
    body = dict(zip(fields, _getter(fields)(record)))  # noqa: B905 (same length by construction)
    if "time" in body:
        body["time"] = _rfc3339(record.time, _TIME_CACHE)
    for name in _DURATIONS:
        value = body.get(name)
        if value is not None:
            body[name] = round(value, 3) if math.isfinite(value) else None
    return _ENCODER.encode(body)


@attrs.frozen
class AccessLogConfig:
    """The `[access_log]` table: which fields, how much to keep, and where the gateway writes it.

    `path` is `-` for stdout or a file that rotates at `max_bytes`, keeping `backups` old files.
    """

    fields: tuple[str, ...] = ALL_FIELDS
    sample_rate: float = 1.0
    always_log_errors: bool = True
    path: str = STDOUT
    max_bytes: int = 100 * 2**20
    backups: int = 5

    @classmethod
    def from_mapping(cls, value: Any) -> AccessLogConfig:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigInvalid("access_log: must be a table")
        unknown = sorted(str(k) for k in set(value) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigInvalid(f"access_log: unknown key {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})")
        kwargs: dict[str, Any] = {}
        if "fields" in value:
            fields = value["fields"]
            if not isinstance(fields, list | tuple) or not fields:
                raise ConfigInvalid("access_log.fields: must be a non-empty list of field names")
            for name in fields:
                if name not in ALL_FIELDS:
                    raise ConfigInvalid(f"access_log.fields: {name!r} is not one of {', '.join(ALL_FIELDS)}")
            if len(set(fields)) != len(fields):
                raise ConfigInvalid("access_log.fields: a field is listed twice")
            kwargs["fields"] = tuple(fields)
        if "sample_rate" in value:
            rate = value["sample_rate"]
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ConfigInvalid(f"access_log.sample_rate: {rate!r} is not a number in [0, 1]")
            kwargs["sample_rate"] = float(rate)
        if "always_log_errors" in value:
            flag = value["always_log_errors"]
            if not isinstance(flag, bool):
                raise ConfigInvalid(f"access_log.always_log_errors: {flag!r} is not true or false")
            kwargs["always_log_errors"] = flag
        if "path" in value:
            path = value["path"]
            if not isinstance(path, str) or not path or "\x00" in path:
                raise ConfigInvalid(f"access_log.path: {path!r} is not a file path or '-'")
            kwargs["path"] = path
        for key, low in (("max_bytes", 4096), ("backups", 0)):
            if key in value:
                number = value[key]
                if isinstance(number, bool) or not isinstance(number, int) or number < low:
                    raise ConfigInvalid(f"access_log.{key}: {number!r} is not an integer >= {low}")
                kwargs[key] = number
        return cls(**kwargs)

    def should_log(self, record: AccessLogRecord, rng: random.Random) -> bool:
        """The sampling decision for one record (see the module docstring)."""
        rate = self.sample_rate
        if rate >= 1.0:
            return True
        if self.always_log_errors and record.is_error:
            return True
        if rate <= 0.0:
            return False
        trace_id = record.trace_id
        if trace_id is not None and len(trace_id) == 32:
            try:
                # The low 32 bits of a W3C trace id are random (Trace Context level 2, "random" flag).
                return int(trace_id[-8:], 16) < rate * 2**32
            except ValueError:
                pass
        return rng.random() < rate

    def format(self, record: AccessLogRecord) -> str:
        return format_line(record, self.fields)
