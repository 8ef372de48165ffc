"""The dashboard's ASGI routes, called in process (no sockets): page, static files, overview, fallback."""

from __future__ import annotations

import json
import re
from pathlib import Path

from federation.dashboard.app import STATIC_DIR, make_app, make_dashboard
from federation.dashboard.model import MeshModel, Target


async def call(app, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def test_page_and_its_files_are_served_with_a_strict_policy():
    app = make_app(MeshModel())
    status, headers, body = await call(app, "/dashboard/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    for ref in re.findall(rb'(?:src|href)="([^"]+)"', body):
        assert ref.startswith(b"/dashboard/static/"), ref  # nothing from another origin: works offline
        s, h, b = await call(app, ref.decode())
        assert s == 200 and b and "charset" in h["content-type"]
    assert (await call(app, "/dashboard"))[0] == 308


async def test_unknown_and_traversing_paths_are_404_and_writes_are_405():
    app = make_app(MeshModel())
    assert (await call(app, "/dashboard/static/../app.py"))[0] == 404
    assert (await call(app, "/dashboard/static/nope.js"))[0] == 404
    assert (await call(app, "/elsewhere"))[0] == 404
    status, headers, _ = await call(app, "/api/v1/overview", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_overview_is_the_models_json():
    model = MeshModel()
    model.ingest_round(5.0, [(Target("gateway east-1", "gateway", "east-1", url="http://x/metrics"),
                              ConnectionRefusedError("refused"))])
    app = make_app(model, wall_clock=lambda: 6.0)
    status, headers, body = await call(app, "/api/v1/overview")
    assert status == 200 and headers["cache-control"] == "no-store"
    view = json.loads(body)
    assert view["generated_at"] == 6.0
    assert view["targets"][0]["state"] == "unreachable"


async def test_other_paths_go_to_the_control_planes_api():
    async def api(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"control " + scope["path"].encode()})

    app, scraper = make_dashboard(lambda: [], fallback=api)
    assert (await call(app, "/v1/status"))[2] == b"control /v1/status"
    assert (await call(app, "/api/v1/overview"))[0] == 200
    assert callable(scraper)


def test_the_script_never_puts_data_in_html():
    """Names reach the page through textContent only (the browser test proves it with a hostile name)."""
    script = (STATIC_DIR / "app.js").read_text()
    assert "innerHTML" not in script.replace("never innerHTML", "")
    assert "outerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    for path in Path(STATIC_DIR).iterdir():
        assert "http://" not in path.read_text().replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in path.read_text(), path


def test_targets_from_a_cluster_config(tmp_path):
    from federation.config import ClusterConfig
    from federation.dashboard.app import targets_from_config

    path = tmp_path / "east-1.toml"
    path.write_text('[cluster]\nname = "east-1"\nregion = "us-east"\nzones = ["us-east-1a", "us-east-1b"]\n'
                    '[gateway]\nadmin = "127.0.1.1:15000"\n')
    config = ClusterConfig.from_toml(path)
    (gateway,) = targets_from_config(config)
    assert gateway.url == "http://127.0.1.1:15000/metrics" and gateway.zones == ("us-east-1a", "us-east-1b")
    gateway, control = targets_from_config(config, control_render=lambda: b"")
    assert control.kind == "control" and control.render is not None and control.region == "us-east"
