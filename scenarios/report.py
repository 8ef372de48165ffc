"""Drill reports: a JSON summary, a self-contained HTML page with SVG plots (matplotlib), a terminal table.

The HTML embeds its SVGs inline and loads nothing from the network, so a report can be mailed or
archived as one file. Fault windows are shaded on every plot; SLO verdicts head the page.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from scenarios.analysis import Sample, Verdict, Window, windows
from scenarios.model import Scenario


@attrs.frozen
class DrillResult:
    scenario: Scenario
    samples: tuple[Sample, ...]
    verdicts: tuple[Verdict, ...]
    measured: dict[str, Any]  # time_to_failover_s, time_to_first_success_s, time_to_return_s, ...
    fault_windows: tuple[tuple[str, float, float], ...]  # (kind, start, end)

    @property
    def passed(self) -> bool:
        return all(v.held for v in self.verdicts)

    def failures_by_reason(self) -> dict[str, int]:
        """Failed requests by status and reason (`503 upstream-connect`, `0 ReadTimeout`, ...)."""
        counts: dict[str, int] = {}
        for s in self.samples:
            if not s.ok:
                key = f"{s.status} {s.reason}".strip()
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self, machine: str = "") -> dict[str, Any]:
        total = len(self.samples)
        ok = sum(s.ok for s in self.samples)
        return {
            "drill": self.scenario.name,
            "description": self.scenario.description,
            "machine": machine,
            "passed": self.passed,
            "requests": total,
            "success_ratio": ok / total if total else None,
            "idempotent_failures": sum(1 for s in self.samples if s.idempotent and not s.ok),
            "failures_by_reason": self.failures_by_reason(),
            "measured": self.measured,
            "faults": [{"kind": k, "start_s": a, "end_s": b} for k, a, b in self.fault_windows],
            "slos": [attrs.asdict(v) for v in self.verdicts],
        }


def _plots(result: DrillResult, wins: Sequence[Window]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    t = [w.start_s for w in wins]

    def shade(ax) -> None:
        for kind, start, end in result.fault_windows:
            ax.axvspan(start, end, color="tab:red", alpha=0.12, label=f"fault: {kind}")

    figures: list[tuple[str, str]] = []

    def render(title: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(8, 2.6))
        draw(ax)
        shade(ax)
        ax.set_xlabel("seconds since start")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(labels, handles, strict=False))
            ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")
        buffer = io.StringIO()
        fig.tight_layout()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
        svg = buffer.getvalue()
        figures.append((title, svg[svg.find("<svg"):]))

    render("success ratio", lambda ax: (ax.plot(t, [w.success_ratio for w in wins], color="tab:green"), ax.set_ylim(-0.02, 1.02)))
    render(
        "latency (ms)",
        lambda ax: (ax.plot(t, [w.p50_ms for w in wins], label="p50"), ax.plot(t, [w.p99_ms for w in wins], label="p99")),
    )
    zones = sorted({z for w in wins for z in w.share_by_zone})

    def share(ax) -> None:
        if zones:
            ax.stackplot(t, *[[w.share_by_zone.get(z, 0.0) for w in wins] for z in zones], labels=zones)
        ax.set_ylim(0, 1)

    render("traffic share by locality", share)
    return figures


def write_report(result: DrillResult, directory: Path, machine: str = "") -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.html` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = result.summary(machine)
    wins = windows(result.samples)
    summary["windows"] = [attrs.asdict(w) for w in wins]
    json_path = directory / f"{result.scenario.name}.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    rows = "".join(
        f"<tr class={'held' if v.held else 'missed'}><td>{html.escape(v.slo)}</td><td>{v.limit}</td>"
        f"<td>{'—' if v.measured is None else round(v.measured, 4)}</td><td>{'held' if v.held else 'MISSED'}</td></tr>"
        for v in result.verdicts
    )
    plots = "".join(f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>" for title, svg in _plots(result, wins))
    verdict = "passed" if result.passed else "FAILED"
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in result.measured.get("notes", ()))
    notes = f"<ul class=notes>{notes}</ul>" if notes else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drill {html.escape(result.scenario.name)}: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }}
tr.missed td {{ color: #b00; font-weight: bold; }} figure {{ margin: 1rem 0; }} svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>Drill <code>{html.escape(result.scenario.name)}</code>: {verdict}</h1>
<p>{html.escape(result.scenario.description)}</p>
<p>{summary['requests']} requests, success ratio {summary['success_ratio'] if summary['success_ratio'] is None else f"{summary['success_ratio']:.4%}"},
{summary['idempotent_failures']} failed idempotent requests. {html.escape(machine)}</p>
{notes}<table><tr><th>SLO</th><th>limit</th><th>measured</th><th>verdict</th></tr>{rows}</table>
{plots}
</body></html>
"""
    html_path = directory / f"{result.scenario.name}.html"
    html_path.write_text(page)
    return json_path, html_path


def print_summary(results: Sequence[DrillResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="drills")
    for column in ("drill", "verdict", "requests", "success", "failed idempotent", "time to failover", "SLOs missed"):
        table.add_column(column)
    for r in results:
        s = r.summary()
        ttf = r.measured.get("time_to_failover_s")
        table.add_row(
            r.scenario.name,
            "[green]passed[/green]" if r.passed else "[red]FAILED[/red]",
            str(s["requests"]),
            "—" if s["success_ratio"] is None else f"{s['success_ratio']:.4%}",
            str(s["idempotent_failures"]),
            "—" if ttf is None else f"{ttf * 1000:.0f} ms",
            ", ".join(v.slo for v in r.verdicts if not v.held) or "none",
        )
    Console(width=200).print(table)


def results_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of drill summaries (as `write_report` saves them): drill, SLOs, failover time, errors."""

    def number(value: Any) -> str:
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| drill | verdict | SLOs (limit → measured) | time to failover | requests | errors |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in sorted(summaries, key=lambda x: x["drill"]):
        slos = "; ".join(f"{v['slo']} {number(v['limit'])} → {number(v['measured'])}{'' if v['held'] else ' **missed**'}"
                         for v in s["slos"])
        ttf = s["measured"].get("time_to_failover_s")
        errors = ", ".join(f"{n}× {reason}" for reason, n in s["failures_by_reason"].items()) or "none"
        lines.append(f"| {s['drill']} | {'passed' if s['passed'] else '**FAILED**'} | {slos} | "
                     f"{'—' if ttf is None else f'{ttf * 1000:.0f} ms'} | {s['requests']} | {errors} |")
    return "\n".join(lines) + "\n"


def write_results(report_dir: Path, results_dir: Path, *, header: str) -> Path:
    """Copy every drill's JSON summary from `report_dir` into `results_dir` (windows left out) with a README table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for path in sorted(report_dir.glob("*.json")):
        summary = json.loads(path.read_text())
        summary.pop("windows", None)
        summaries.append(summary)
        (results_dir / path.name).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    readme = results_dir / "README.md"
    readme.write_text(header.rstrip() + "\n\n" + results_table(summaries))
    return readme
