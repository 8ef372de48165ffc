"""Static stability as the operator sees it: a gateway whose catalog source stopped answering keeps
its catalog, reports the catalog's age in `isthmus_catalog_stale_seconds` and warns once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from gateway.failover import Failover
from gateway.lb.balancer import BalancerSet
from gateway.metrics import GatewayMetrics
from registry.model import Locality


def gateway() -> SimpleNamespace:
    config = SimpleNamespace(cluster="east-1", locality=Locality("us-east", "us-east-1a"), source_address=None,
                             eastwest_address=("127.0.1.1", 15443), identity=None)
    return SimpleNamespace(config=config, picker_factory=BalancerSet(), metrics=GatewayMetrics(), catalog=None,
                           _table=None, upstreams=None, contexts=None, stale_reason=None)


def stale_seconds(gw: SimpleNamespace) -> float:
    return gw.metrics.registry.get_sample_value("isthmus_catalog_stale_seconds")


def test_a_stale_catalog_reports_its_age_and_warns_once(caplog):
    gw = gateway()
    source = SimpleNamespace(stale_since=None)
    failover = Failover(gw, source)
    failover.refresh_metrics(10.0)
    assert stale_seconds(gw) == 0
    source.stale_since = 10.0
    with caplog.at_level(logging.WARNING, logger="isthmus.gateway.failover"):
        for now in (10.5, 12.0, 13.0, 40.0):
            failover.refresh_metrics(now)
    assert stale_seconds(gw) == 30.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "last-known-good" in warnings[0]
    source.stale_since = None
    failover.refresh_metrics(41.0)
    assert stale_seconds(gw) == 0


def test_a_source_that_failed_for_good_counts_from_when_it_was_noticed():
    gw = gateway()
    failover = Failover(gw, SimpleNamespace())
    gw.stale_reason = "catalog file vanished"
    failover.refresh_metrics(5.0)
    failover.refresh_metrics(7.5)
    assert stale_seconds(gw) == 2.5
