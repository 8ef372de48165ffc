"""Render `prometheus/scrape.yml.tmpl` into a Prometheus config for given gateways and control planes.

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
