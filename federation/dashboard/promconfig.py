"""Render `prometheus/scrape.yml.tmpl` into a Prometheus config for given gateways and control planes,
and the command line that runs Prometheus on it.

Pure; imports only the standard library.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).parent / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules.yml"
TEMPLATE_FILE = PROMETHEUS_DIR / "scrape.yml.tmpl"


def render_scrape_config(gateways: Sequence[str], controls: Sequence[str] = (), *,
                         rules_file: str | Path = RULES_FILE, scrape_interval: str = "15s") -> str:
    """The config text; `gateways` and `controls` are `host:port` admin and `control.api` addresses."""
    template = string.Template(TEMPLATE_FILE.read_text())
    return template.substitute(
        gateway_targets=json.dumps(list(gateways)),
        control_targets=json.dumps(list(controls)),
        rules_file=json.dumps(str(rules_file)),
        scrape_interval=scrape_interval,
    )


def prometheus_argv(config: str | Path, tsdb: str | Path, address: str, *extra: str) -> list[str]:
    """How the demo and the tests run Prometheus (2.40 to 2.48). `native-histograms` makes it ask for the
    protobuf exposition first, which gateways serve (`gateway.exposition`): each series' labels once
    rather than on every histogram bucket line, a quarter of the text's size. Histograms stay classic.
    From 2.49, `scrape_protocols: [PrometheusProto, ...]` in the scrape config does the same."""
    return ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}", f"--web.listen-address={address}",
            "--enable-feature=native-histograms", *extra]  # fmt: skip
