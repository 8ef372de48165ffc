"""`isthmus top` shows each linked peer's own summary: healthy, degraded and silent peers, a silent
peer with its last good figures and their age, a refused summary named as such."""

from __future__ import annotations

from rich.console import Console

from federation.commands.top import render


def peer(name: str, *, state: str, health: str, age_s: float | None, summary: dict | None) -> dict:
    return {"name": name, "state": state, "since": 0.0, "error": "", "health": health, "current": state == "ok",
            "received_at": None if age_s is None else 100.0, "age_s": age_s, "summary": summary}  # fmt: skip


def summary(gateways: list[str], services: list[tuple[str, float, float | None]]) -> dict:
    return {
        "gateways": [{"name": f"gw-{i}", "state": state, "since": 0.0} for i, state in enumerate(gateways)],
        "services": [{"name": n, "rps": rps, "success_rate": ok, "p50_ms": 1.0, "p99_ms": 2.0, "share": [],
                      "active_locality": None} for n, rps, ok in services],  # fmt: skip
    }


def text_of(overview: dict) -> str:
    console = Console(record=True, width=160)
    console.print(render(overview, "127.0.1.1:7000"))
    return console.export_text()


def overview(peers: list[dict]) -> dict:
    return {"rate_window_s": 10, "services": [], "pairs": [], "links": [], "warnings": [], "peers": peers}


def row(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.strip("│ ").startswith(name + " "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_each_peer_is_a_row_with_its_health_gateways_and_traffic():
    text = text_of(overview([
        peer("west-1", state="ok", health="ok", age_s=1.0,
             summary=summary(["up", "up"], [("hello.demo", 12.5, 1.0), ("echo.demo", 3.0, 0.995)])),
        peer("east-2", state="ok", health="degraded", age_s=2.0, summary=summary(["up", "unreachable"], [])),
        peer("eu-1", state="no-answer", health="silent", age_s=41.0, summary=summary(["up"], [("a.b", 7.0, 0.9)])),
        peer("ap-1", state="refused", health="silent", age_s=None, summary=None),
    ]))  # fmt: skip
    assert "peers (their own summaries" in text
    assert row(text, "west-1") == ["west-1", "ok", "1 s ago", "2/2", "2", "15.5", "99.50%"]
    assert row(text, "east-2") == ["east-2", "degraded", "2 s ago", "1/2", "0", "0.0", "–"]
    assert row(text, "eu-1") == ["eu-1", "silent", "41 s ago", "1/1", "1", "7.0", "90.00%"]
    assert row(text, "ap-1") == ["ap-1", "refused", "never", "–", "–", "–", "–"]


def test_no_linked_peer_no_peers_table():
    assert "peers (" not in text_of(overview([]))
