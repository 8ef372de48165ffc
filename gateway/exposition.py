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

Rendering one registry keeps a renderer (and its cache) per registry in a weak mapping, so a gateway
only calls `render(self.registry)`. Pure: no trio, no I/O; must not import `federation`.
"""

from __future__ import annotations

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


class _ChildFamily(_Family):
    """A `Counter`, `Gauge` or `Histogram`, read from its children with cached series prefixes."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector
        self.kind = collector._type
        name = collector._name
        self.header = _header(name + "_total" if self.kind == "counter" else name, self.kind, collector._documentation)
        self.prefixes: dict[tuple[str, ...], Any] = {}

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

    def write(self, out: list[str], fmt: ValueText) -> None:
        out.append(self.header)
        children = self._children()
        prefixes = self.prefixes
        if len(prefixes) > len(children):  # label sets were removed: forget their strings
            alive = {values for values, _ in children}
            for values in [v for v in prefixes if v not in alive]:
                del prefixes[values]
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

    def render(self) -> bytes:
        with self._lock:
            return self._render()

    def _render(self) -> bytes:
        collectors, target_info = self._collectors()
        out: list[str] = []
        if target_info is not None:
            _CollectedFamily(lambda: [target_info]).write(out, self.fmt)
        families = self.families
        if len(families) > len(collectors):
            alive = set(collectors)
            for gone in [c for c in families if c not in alive]:
                del families[gone]
        for collector in collectors:
            family = families.get(collector)
            if family is None:
                family = families[collector] = _family_of(collector)
            family.write(out, self.fmt)
        return "".join(out).encode("utf-8")


_RENDERERS: WeakKeyDictionary[CollectorRegistry, TextExposition] = WeakKeyDictionary()


def render(registry: CollectorRegistry) -> bytes:
    """The registry's text exposition, through its cached renderer."""
    renderer = _RENDERERS.get(registry)
    if renderer is None:
        renderer = _RENDERERS[registry] = TextExposition(registry)
    return renderer.render()
