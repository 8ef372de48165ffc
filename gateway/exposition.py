"""The Prometheus text exposition (format 0.0.4) of one `CollectorRegistry`, fast enough for a gateway's
`/metrics` with thousands of series: `render(registry) -> bytes`.

It writes the same families, series, label sets and values, in the same order, as
`prometheus_client.generate_latest`, but:

- each series' label string (escaped, sorted, with the histogram `le` bounds in place) is formatted
  once per label set and cached per metric family; a label set first seen since the last scrape is
  formatted at that scrape, and the cache drops the label sets that were removed;
- counters, gauges and histograms are read straight from their children's values instead of through
  `collect()` (which builds a `Sample` and a label dict per line), and whole numbers are formatted
  once; every other collector (summaries, info, enums, custom collectors) goes through `collect()`
  with the same output rules;
- no `_created` series: their values change nothing a dashboard or rule reads, and they add one series
  per label set and family. This is decided per registry here, not by prometheus_client's process-wide
  `disable_created_metrics()`, so other registries in the same process are left as they are.

The same registry also renders as Prometheus' protobuf exposition (`render_protobuf`: delimited
`io.prometheus.client.MetricFamily` messages, hand-encoded; no protobuf runtime needed), which a
Prometheus scraper asks for first when run with `--enable-feature=native-histograms` (2.40+) or
`scrape_protocols: [PrometheusProto, ...]` (2.49+). There a series' labels are written once per
series, not once per histogram bucket: a gateway with 1,000 services and 10 clusters is ~1 MB raw
instead of ~4 MB of text. Histograms stay classic (explicit bounds, cumulative counts, the `+Inf`
bucket written out). `negotiate(request_headers)` picks the format from `Accept`.

Rendering one registry keeps a renderer (and its cache) per registry in a weak mapping, so a gateway
only calls `render(self.registry)` or `render_protobuf(self.registry)`. Pure: no trio, no I/O; must
not import `federation`.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from operator import attrgetter, methodcaller
from typing import Any
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.utils import floatToGoString
from prometheus_client.values import MutexValue, ValueClass

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PROTOBUF_CONTENT_TYPE = b"application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
# A child's value is read without taking its lock when it is prometheus_client's in-process
# `MutexValue`: the lock guards read-modify-write in `inc`/`observe`, and reading one float
# attribute is atomic under the GIL; half the cost of a histogram scrape was taking those locks.
# Any other value class (multiprocess mode) is read through its `get()`.
_read: Callable[[Any], float] = attrgetter("_value") if ValueClass is MutexValue else methodcaller("get")
# Formatted whole numbers kept for reuse: counters and bucket counts repeat the same values a lot.
_VALUE_MEMO_MAX = 8192


def escape_label_value(value: str) -> str:
    """A label value as the text format writes it (backslash, newline and double quote escaped)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`k1="v1",k2="v2"` sorted by label name, as `generate_latest` writes them (no braces)."""
    return ",".join(f'{escape_label_name(k)}="{escape_label_value(v)}"' for k, v in sorted(pairs))


def _series_name(name: str, labels: str) -> str:
    return f"{escape_metric_name(name)}{{{labels}}} " if labels else f"{escape_metric_name(name)} "


def _header(name: str, kind: str, documentation: str) -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    name = escape_metric_name(name)
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


# -- protobuf primitives (metrics.proto, package io.prometheus.client) -----------------------------
# MetricFamily: 1 name, 2 help, 3 type, 4 metric*.  Metric: 1 label*, 2 gauge, 3 counter, 5 untyped,
# 7 histogram.  LabelPair: 1 name, 2 value.  Gauge/Counter/Untyped: 1 value (double).
# Histogram: 1 sample_count (uint64), 2 sample_sum (double), 3 bucket*.  Bucket: 1 cumulative_count
# (uint64), 2 upper_bound (double).
_COUNTER, _GAUGE, _UNTYPED, _HISTOGRAM = 0, 1, 3, 4
_METRIC_FIELD = {_COUNTER: 3, _GAUGE: 2, _UNTYPED: 5}
_double = struct.Struct("<d").pack


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]  # varints below 128, and every tag used here


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _ONE_BYTE[number << 3 | 2] + _varint(len(payload)) + payload


def _double_field(number: int, value: float) -> bytes:
    return _ONE_BYTE[number << 3 | 1] + _double(value)


def _label_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    """The `label` fields of a `Metric`, sorted by name as Prometheus keeps them."""
    return b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(pairs))


def _family_message(name: str, documentation: str, kind: int, metrics: list[bytes]) -> bytes:
    """One delimited `MetricFamily`: its length, then its fields."""
    body = b"".join([_field(1, name.encode()), _field(2, documentation.encode()), _varint(3 << 3) + _varint(kind),
                     *(_field(4, m) for m in metrics)])  # fmt: skip
    return _varint(len(body)) + body


class _Varints(dict[int, bytes]):
    """Varint encodings memoised (counts repeat a lot), bounded like `ValueText`'s memo."""

    def __missing__(self, value: int) -> bytes:
        if len(self) >= _VALUE_MEMO_MAX:
            self.clear()
        encoded = self[value] = _varint(value)
        return encoded


def _histogram_metric(labels: bytes, bounds: list[bytes], counts: list[float], total: float, varints: _Varints) -> bytes:
    """A histogram `Metric`: `bounds[i]` is bucket i's encoded `upper_bound` field, `counts[i]` its
    cumulative count. A bucket message is < 128 bytes, so its length is one byte."""
    parts = [b"\x08", varints[int(counts[-1])], _double_field(2, total)]
    for bound, count in zip(bounds, counts, strict=True):
        bucket = b"\x08" + varints[int(count)] + bound
        parts.append(b"\x1a" + bytes((len(bucket),)) + bucket)
    histogram = b"".join(parts)
    return labels + b":" + _varint(len(histogram)) + histogram  # b":" is field 7, wire type 2


class ValueText:
    """Go-style float formatting (`floatToGoString`), memoised for the values that repeat (`memo`).

    0.0 and -0.0 are one dict key but print differently: `memo` holds only 0.0, so it may be consulted
    directly only for values that cannot be -0.0 (counters and histograms only ever add to 0.0);
    calling the instance is right for any value."""

    def __init__(self) -> None:
        self.memo: dict[float, str] = {0.0: "0.0"}

    def __call__(self, value: float) -> str:
        if value == 0:
            return floatToGoString(value)
        text = self.memo.get(value)
        if text is None:
            text = floatToGoString(value)
            if isinstance(value, float) and value.is_integer():  # counts repeat; sums seldom do
                if len(self.memo) >= _VALUE_MEMO_MAX:  # counters moved on: start afresh
                    self.memo.clear()
                    self.memo[0.0] = "0.0"
                self.memo[value] = text
        return text


class _Family:
    """One collector's part of the exposition."""

    def write(self, out: list[str], fmt: ValueText) -> None:
        raise NotImplementedError

    def write_proto(self, out: list[bytes]) -> None:
        raise NotImplementedError


class _ChildFamily(_Family):
    """A `Counter`, `Gauge` or `Histogram`, read from its children with cached series prefixes."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector
        self.kind = collector._type
        name = collector._name
        self.name = name + "_total" if self.kind == "counter" else name
        self.header = _header(self.name, self.kind, collector._documentation)
        self.prefixes: dict[tuple[str, ...], Any] = {}
        self.label_fields: dict[tuple[str, ...], bytes] = {}
        self.varints = _Varints()

    def _children(self) -> list[tuple[tuple[str, ...], Any]]:
        c = self.collector
        if not c._labelnames:
            return [((), c)]
        with c._lock:
            return list(c._metrics.items())

    def _prefix(self, values: tuple[str, ...]) -> Any:
        c = self.collector
        pairs = list(zip(c._labelnames, values, strict=True))
        name = c._name
        if self.kind == "counter":
            return _series_name(name + "_total", label_text(pairs))
        if self.kind == "gauge":
            return _series_name(name, label_text(pairs))
        buckets = [_series_name(name + "_bucket", label_text([*pairs, ("le", floatToGoString(b))]))
                   for b in c._upper_bounds]  # fmt: skip
        labels = label_text(pairs)
        total = _series_name(name + "_sum", labels) if c._upper_bounds[0] >= 0 else None
        return buckets, _series_name(name + "_count", labels), total

    @staticmethod
    def _forget_removed(cache: dict[tuple[str, ...], Any], children: list[tuple[tuple[str, ...], Any]]) -> None:
        if len(cache) > len(children):  # label sets were removed: forget their strings
            alive = {values for values, _ in children}
            for values in [v for v in cache if v not in alive]:
                del cache[values]

    def write(self, out: list[str], fmt: ValueText) -> None:
        out.append(self.header)
        children = self._children()
        prefixes = self.prefixes
        self._forget_removed(prefixes, children)
        # The hot loop (one pass per series line): local names, memoised numbers, values read as the
        # module comment on `_read` says; `append` three pieces rather than format one string.
        append, known, read, kind = out.append, fmt.memo.get, _read, self.kind
        for values, child in children:
            prefix = prefixes.get(values)
            if prefix is None:
                prefix = prefixes[values] = self._prefix(values)
            if kind == "histogram":
                buckets, count, total = prefix
                acc = 0.0
                for bucket_prefix, bucket in zip(buckets, child._buckets, strict=True):
                    acc += read(bucket)
                    append(bucket_prefix)
                    append(known(acc) or fmt(acc))
                    append("\n")
                append(count)
                append(known(acc) or fmt(acc))
                append("\n")
                if total is not None:
                    value = read(child._sum)
                    append(total)
                    append(known(value) or fmt(value))
                    append("\n")
            elif "_child_samples" in child.__dict__:  # a gauge given `set_function`
                for sample in child._child_samples():
                    out.append(f"{prefix}{fmt(sample.value)}\n")
            elif kind == "gauge":  # may be -0.0 (see `ValueText`)
                append(prefix)
                append(fmt(read(child._value)))
                append("\n")
            else:
                value = read(child._value)
                append(prefix)
                append(known(value) or fmt(value))
                append("\n")

    def write_proto(self, out: list[bytes]) -> None:
        c, kind = self.collector, self.kind
        children = self._children()
        if not children:
            return
        cache = self.label_fields
        self._forget_removed(cache, children)
        read, metrics, varints = _read, [], self.varints
        if kind == "histogram":
            bounds = [_double_field(2, b) for b in c._upper_bounds]
        for values, child in children:
            labels = cache.get(values)
            if labels is None:
                labels = cache[values] = _label_pairs(zip(c._labelnames, values, strict=True))
            if kind == "histogram":
                acc, counts = 0.0, []
                for bucket in child._buckets:
                    acc += read(bucket)
                    counts.append(acc)
                metrics.append(_histogram_metric(labels, bounds, counts, read(child._sum), varints))
                continue
            if "_child_samples" in child.__dict__:  # a gauge given `set_function`
                value = child._child_samples()[0].value
            else:
                value = read(child._value)
            metrics.append(labels + _field(_METRIC_FIELD[_PROTO_KIND[kind]], _double_field(1, value)))
        out.append(_family_message(self.name, c._documentation, _PROTO_KIND[kind], metrics))


class _CollectedFamily(_Family):
    """Any other collector, through `collect()`, with `generate_latest`'s naming and ordering rules."""

    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.collect = collect
        self.labels: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def _line(self, sample: Any, fmt: ValueText) -> str:
        key = (sample.name, tuple(sample.labels.items()))
        prefix = self.labels.get(key)
        if prefix is None:
            if len(self.labels) > _VALUE_MEMO_MAX:
                self.labels.clear()
            prefix = self.labels[key] = _series_name(sample.name, label_text(sample.labels.items()))
        stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
        return f"{prefix}{fmt(sample.value)}{stamp}\n"

    def write(self, out: list[str], fmt: ValueText) -> None:
        for metric in self.collect():
            name, kind = metric.name, metric.type
            if kind == "counter":
                name += "_total"
            elif kind == "info":
                name, kind = name + "_info", "gauge"
            elif kind == "stateset":
                kind = "gauge"
            elif kind == "gaugehistogram":
                kind = "histogram"
            elif kind == "unknown":
                kind = "untyped"
            out.append(_header(name, kind, metric.documentation))
            extra: dict[str, list[str]] = {}
            for sample in metric.samples:
                if sample.name == metric.name + "_created":
                    continue
                for suffix in ("_gsum", "_gcount"):
                    if sample.name == metric.name + suffix:
                        extra.setdefault(suffix, []).append(self._line(sample, fmt))
                        break
                else:
                    out.append(self._line(sample, fmt))
            for suffix, lines in sorted(extra.items()):
                out.append(_header(metric.name + suffix, "gauge", metric.documentation))
                out.extend(lines)

    def write_proto(self, out: list[bytes]) -> None:
        """Counters, gauges and info as themselves; any other type as untyped series, one family per
        sample name (what Prometheus reads from untyped text, `le` and all)."""
        for metric in self.collect():
            kind = {"counter": _COUNTER, "gauge": _GAUGE, "info": _GAUGE}.get(metric.type, _UNTYPED)
            by_name: dict[str, list[bytes]] = {}
            for sample in metric.samples:
                if sample.name == metric.name + "_created":
                    continue
                body = _label_pairs(sample.labels.items()) + _field(_METRIC_FIELD[kind], _double_field(1, sample.value))
                by_name.setdefault(sample.name, []).append(body)
            for name, metrics in by_name.items():
                out.append(_family_message(name, metric.documentation, kind, metrics))


_PROTO_KIND = {"counter": _COUNTER, "gauge": _GAUGE, "histogram": _HISTOGRAM}


def _family_of(collector: Any) -> _Family:
    if type(collector) in (Counter, Gauge, Histogram):
        return _ChildFamily(collector)
    return _CollectedFamily(collector.collect)


class TextExposition:
    """The renderer of one registry; keeps a `_Family` (and its label cache) per registered collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.families: dict[Any, _Family] = {}
        self.fmt = ValueText()
        self._lock = threading.Lock()  # one scrape at a time mutates the caches (threaded servers)

    def _collectors(self) -> tuple[list[Any], Any]:
        registry = self.registry
        with registry._lock:
            collectors = list(registry._collector_to_names)
            target_info = registry._target_info_metric() if registry._target_info else None
        return collectors, target_info

    def _families(self) -> list[_Family]:
        """The families to write, in registration order (the target info first), caches kept."""
        collectors, target_info = self._collectors()
        families = self.families
        if len(families) > len(collectors):
            alive = set(collectors)
            for gone in [c for c in families if c not in alive]:
                del families[gone]
        ordered = [] if target_info is None else [_CollectedFamily(lambda: [target_info])]
        for collector in collectors:
            family = families.get(collector)
            if family is None:
                family = families[collector] = _family_of(collector)
            ordered.append(family)
        return ordered

    def render(self) -> bytes:
        with self._lock:
            out: list[str] = []
            for family in self._families():
                family.write(out, self.fmt)
            return "".join(out).encode("utf-8")

    def render_protobuf(self) -> bytes:
        with self._lock:
            out: list[bytes] = []
            for family in self._families():
                family.write_proto(out)
            return b"".join(out)


_RENDERERS: WeakKeyDictionary[CollectorRegistry, TextExposition] = WeakKeyDictionary()


def _renderer(registry: CollectorRegistry) -> TextExposition:
    renderer = _RENDERERS.get(registry)
    if renderer is None:
        renderer = _RENDERERS[registry] = TextExposition(registry)
    return renderer


def render(registry: CollectorRegistry) -> bytes:
    """The registry's text exposition, through its cached renderer."""
    return _renderer(registry).render()


def render_protobuf(registry: CollectorRegistry) -> bytes:
    """The registry's protobuf exposition (delimited `MetricFamily` messages), through its cached renderer."""
    return _renderer(registry).render_protobuf()


def wants_protobuf(request_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when `Accept` lists the delimited `MetricFamily` protobuf format ahead of (or as good as)
    every text format it lists, as Prometheus' scraper does when it can read it."""
    best_proto, best_text = -1.0, -1.0
    for name, value in request_headers:
        if name.lower() != b"accept":
            continue
        for item in value.split(b","):
            media, *params = (part.strip() for part in item.split(b";"))
            options = dict(p.partition(b"=")[::2] for p in params)
            try:
                q = float(options.get(b"q", b"1"))
            except ValueError:
                q = 0.0
            if media.lower() == b"application/vnd.google.protobuf":
                if options.get(b"proto") == b"io.prometheus.client.MetricFamily" and options.get(b"encoding") == b"delimited":
                    best_proto = max(best_proto, q)
            elif media.lower() in (b"text/plain", b"application/openmetrics-text", b"*/*", b"text/*"):
                best_text = max(best_text, q)
    return best_proto > 0 and best_proto >= best_text


def negotiate(registry: CollectorRegistry, request_headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """`(content type, body)` of `/metrics` for a request: protobuf when its `Accept` prefers it, text otherwise."""
    if wants_protobuf(request_headers):
        return PROTOBUF_CONTENT_TYPE, render_protobuf(registry)
    return CONTENT_TYPE, render(registry)
