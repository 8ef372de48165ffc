"""Without the `otlp` extra: nothing changes and nothing is imported unless `[tracing]` asks for
spans, and then the gateway refuses with one line naming the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.config import GatewayConfig, TracingConfig
from gateway.errors import ConfigInvalid
from gateway.request_policy import RequestPolicy, traffic_options
from gateway.server import Gateway
from registry.model import Locality

ROOT = Path(__file__).resolve().parents[3]
NEEDS_EXTRA = r"^tracing: \[tracing\] needs the otlp extra \(.+\): pip install 'isthmus\[otlp\]'$"




def gateway_config() -> GatewayConfig:
    return GatewayConfig(cluster="east-1", locality=Locality("us-east", "us-east-1a"),
                         contexts=SimpleNamespace(server=None, client=None))


def test_a_gateway_without_tracing_never_imports_opentelemetry():
    script = (
        "import sys, trio\n"
        "from types import SimpleNamespace\n"
        "from gateway.request_policy import RequestPolicy, traffic_options\n"
        "from gateway.server import serve_gateway\n"
        "import gateway.otlp\n"
        "assert traffic_options({'access_log': {}}, '.')[1] is not None\n"
        "async def main():\n"
        "    policy = RequestPolicy(cluster='east-1', trust_domain='mesh.example')\n"
        "    req = SimpleNamespace(headers=[], method=b'GET', authority=b'a.b', path=b'/', source_cluster='x')\n"
        "    policy.start(req, object(), eastwest=False).finish(200, '', None, 'east-1')\n"
        "trio.run(main)\n"
        "print(sorted(n for n in sys.modules if n.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_without_the_extra_a_gateway_without_tracing_still_serves_requests(without_opentelemetry, tmp_path):
    authz, access_log = traffic_options({}, tmp_path)
    assert access_log is None
    gateway = Gateway(gateway_config(), authz=authz)
    assert gateway.spans is None and gateway.traffic.spans is None
    policy = RequestPolicy(cluster="east-1", trust_domain="mesh.example")
    req = SimpleNamespace(headers=[], method=b"GET", authority=b"echo.demo", path=b"/", source_cluster="east-1")
    state = policy.start(req, object(), eastwest=False)
    assert state.span is None and state.record is None
    assert dict(req.headers)[b"traceparent"].endswith(b"-00")  # the trace context works as before


def test_without_the_extra_tracing_is_refused_with_one_line(without_opentelemetry, tmp_path):
    with pytest.raises(ConfigInvalid, match=NEEDS_EXTRA):
        traffic_options({"tracing": {"otlp_endpoint": "http://127.0.0.1:4318"}}, tmp_path)
    with pytest.raises(ConfigInvalid, match=NEEDS_EXTRA):
        Gateway(gateway_config(), tracing=TracingConfig())
    # A disabled table needs nothing.
    traffic_options({"tracing": {"enabled": False}}, tmp_path)
