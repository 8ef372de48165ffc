// The Isthmus dashboard: polls /api/v1/overview every second and draws it.
// Every name from the data goes into the page through textContent (never innerHTML), so a
// service called "<img src=x onerror=alert(1)>" is shown as text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
let firstData = true;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits);
}

function pct(value) {
  if (value === null || value === undefined) return "–";
  return (value * 100).toFixed(value >= 0.9995 ? 0 : 2) + "%";
}

function clock(ts) {
  if (ts === null || ts === undefined) return "";
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function cell(row, text, cls) {
  const td = el("td", cls ? { class: cls } : {}, text);
  row.appendChild(td);
  return td;
}

function emptyRow(tbody, cols, text) {
  const tr = el("tr");
  const td = el("td", { colspan: cols, class: "muted" }, text);
  tr.appendChild(td);
  tbody.appendChild(tr);
}

function drawWarnings(data) {
  const list = document.getElementById("warnings");
  clear(list);
  if (!data.warnings.length) { list.appendChild(el("li", { class: "muted" }, "none")); return; }
  for (const w of data.warnings) list.appendChild(el("li", { class: w.severity, "data-kind": w.kind }, w.message));
}

function drawMap(data) {
  const map = document.getElementById("map");
  clear(map);
  const regions = data.regions;
  if (!regions.length) {
    map.appendChild(svg("text", { x: 20, y: 40, class: "region-label" }, "no cluster known yet"));
    return;
  }
  const width = 900, height = 320, gap = 20;
  const regionWidth = (width - gap * (regions.length + 1)) / regions.length;
  const pos = {};
  regions.forEach((region, i) => {
    const x = gap + i * (regionWidth + gap);
    map.appendChild(svg("rect", { x, y: 10, width: regionWidth, height: height - 20, rx: 10, class: "region" }));
    map.appendChild(svg("text", { x: x + 12, y: 30, class: "region-label" }, region.name));
    const n = region.clusters.length;
    region.clusters.forEach((c, j) => {
      const cx = x + regionWidth * (j + 1) / (n + 1);
      const cy = height / 2 + (n > 1 ? (j % 2 ? 60 : -50) : 0);
      pos[c.name] = { x: cx, y: cy, c };
    });
  });
  // links first, so clusters draw over their ends
  const drawn = {};
  for (const link of data.links) {
    const a = pos[link.source], b = pos[link.destination];
    if (!a || !b) continue;
    const back = drawn[link.destination + "\u0000" + link.source];
    const bend = back ? -40 : 40;
    drawn[link.source + "\u0000" + link.destination] = true;
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 + bend * (a.x <= b.x ? 1 : -1) * 0.6;
    const path = svg("path", { d: `M ${a.x} ${a.y} Q ${mx} ${my} ${b.x} ${b.y}`, class: "link " + link.state });
    path.appendChild(svg("title", {}, `${link.source} → ${link.destination}: ${link.state}`));
    map.appendChild(path);
    const parts = [];
    if (link.state === "down") parts.push("down");
    if (link.rtt_ms !== null) parts.push(fmt(link.rtt_ms, 1) + " ms");
    if (link.rps) parts.push(fmt(link.rps, 1) + " req/s");
    map.appendChild(svg("text", { x: mx, y: (a.y + b.y) / 2 + bend * 0.3, class: "link-label" },
      `${link.source}→${link.destination} ${parts.join(" · ")}`));
  }
  for (const { x, y, c } of Object.values(pos)) {
    const down = c.gateways.concat(c.controls).some((g) => g.state !== "up");
    const peer = c.peer_health && c.peer_health !== "unknown" ? " peer-" + c.peer_health : "";
    const circle = svg("circle", { cx: x, cy: y, r: 34, class: "cluster" + (down ? " unreachable" : peer) });
    map.appendChild(circle);
    map.appendChild(svg("text", { x, y: y - 2, class: "cluster-label" }, c.name));
    map.appendChild(svg("text", { x, y: y + 13, class: "cluster-sub" }, c.zones.join(", ")));
    let note = c.catalog_revision !== null ? `rev ${c.catalog_revision}` : "";
    if (c.stale_s) note += ` stale ${fmt(c.stale_s, 0)} s`;
    const unreachable = c.gateways.concat(c.controls).filter((g) => g.state !== "up");
    if (unreachable.length) note = `${unreachable[0].name} unreachable since ${clock(unreachable[0].since)}`;
    map.appendChild(svg("text", { x, y: y + 50, class: "cluster-sub" }, note));
  }
}

function sparkline(history) {
  const box = svg("svg", { class: "spark", viewBox: "0 0 120 26", preserveAspectRatio: "none" });
  if (history.length < 2) return box;
  const max = Math.max(...history.map((h) => h[1]), 0.001);
  const t0 = history[0][0], t1 = history[history.length - 1][0] || t0 + 1;
  const pts = history.map((h) => `${((h[0] - t0) / Math.max(t1 - t0, 1)) * 118 + 1},${25 - (h[1] / max) * 23}`);
  box.appendChild(svg("polyline", { points: pts.join(" ") }));
  return box;
}

function drawServices(data) {
  const tbody = document.querySelector("#services tbody");
  clear(tbody);
  document.getElementById("window").textContent = `rates over the last ${fmt(data.rate_window_s, 0)} s`;
  if (!data.services.length) { emptyRow(tbody, 8, "no service has traffic yet"); return; }
  for (const s of data.services) {
    const tr = el("tr", { "data-service": s.name });
    cell(tr, s.name, "name");
    cell(tr, fmt(s.rps, 1), "num rps");
    cell(tr, pct(s.success_rate), "num success" + (s.success_rate !== null && s.success_rate < 0.99 ? " bad" : ""));
    cell(tr, fmt(s.p50_ms, 1), "num p50");
    cell(tr, fmt(s.p99_ms, 1), "num p99");
    const share = cell(tr, "", "share-cell");
    const div = el("div", { class: "share" });
    for (const part of s.share) {
      const span = el("span");
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(2, part.fraction * 60) + "px";
      span.appendChild(bar);
      span.appendChild(document.createTextNode(`${part.locality || "?"} (${part.cluster}) ${pct(part.fraction)}`));
      div.appendChild(span);
    }
    if (!s.share.length) div.appendChild(el("span", { class: "muted" }, "–"));
    share.appendChild(div);
    const eps = s.endpoints || {};
    const epText = Object.keys(eps).length ? Object.entries(eps).map(([k, v]) => `${v} ${k}`).join(", ") : "–";
    cell(tr, epText, "endpoints");
    cell(tr, "", "spark-cell").appendChild(sparkline(s.history));
    tbody.appendChild(tr);
  }
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 90 ? `${fmt(seconds, 0)} s ago` : `${fmt(seconds / 60, 0)} min ago`;
}

// One row per service of each peer's last good summary; a peer that does not answer (or whose
// summary was refused) gets a row saying so, and its last good rows are greyed.
function drawPeers(data) {
  const tbody = document.querySelector("#peers tbody");
  clear(tbody);
  const peers = data.peers || [];
  if (!peers.length) { emptyRow(tbody, 9, "no linked peer"); return; }
  for (const p of peers) {
    const s = p.summary;
    const attrs = { "data-peer": p.name, "data-state": p.state, class: "peer-first" };
    if (!p.current) {
      const tr = el("tr", attrs);
      cell(tr, p.name, "peer");
      const what = p.state === "refused" ? "summary refused" : "no answer";
      const td = cell(tr, `${what} since ${clock(p.since)}: ${p.error}`, "bad");
      td.setAttribute("colspan", "8");
      tbody.appendChild(tr);
    }
    if (!s) {
      if (p.current || p.state === "waiting") emptyRow(tbody, 9, `${p.name}: waiting for its summary`);
      continue;
    }
    const up = s.gateways.filter((g) => g.state === "up").length;
    const gateways = `${up}/${s.gateways.length} up`;
    let catalog = s.catalog_revision !== null ? `rev ${s.catalog_revision}` : "–";
    if (s.stale_s) catalog += `, stale ${fmt(s.stale_s, 0)} s`;
    const rows = s.services.length ? s.services : [null];
    rows.forEach((svc, i) => {
      const tr = el("tr", { "data-peer": p.name, "data-state": p.state, "data-service": svc ? svc.name : "",
        class: (p.current ? "" : "old ") + (p.current && i === 0 ? "peer-first" : "") });
      cell(tr, i === 0 ? p.name : "", "peer");
      if (svc) {
        cell(tr, svc.name, "name");
        cell(tr, fmt(svc.rps, 1), "num rps");
        cell(tr, pct(svc.success_rate), "num success" + (svc.success_rate !== null && svc.success_rate < 0.99 ? " bad" : ""));
        cell(tr, fmt(svc.p99_ms, 1), "num p99");
        cell(tr, svc.active_locality || "–", "active");
      } else {
        cell(tr, "no exported service has traffic", "muted").setAttribute("colspan", "5");
      }
      cell(tr, i === 0 ? gateways : "", "gateways" + (i === 0 && up < s.gateways.length ? " bad" : ""));
      cell(tr, i === 0 ? catalog : "", "catalog");
      cell(tr, i === 0 ? ago(p.age_s) : "", "age");
      tbody.appendChild(tr);
    });
  }
}

function drawPairs(data) {
  const tbody = document.querySelector("#pairs tbody");
  clear(tbody);
  if (!data.pairs.length) { emptyRow(tbody, 5, "no traffic yet"); return; }
  for (const p of data.pairs) {
    const tr = el("tr");
    cell(tr, p.source || "(local)");
    cell(tr, p.destination || "(none)");
    cell(tr, fmt(p.rps, 1), "num");
    cell(tr, pct(p.success_rate), "num");
    cell(tr, fmt(p.p99_ms, 1), "num");
    tbody.appendChild(tr);
  }
}

function drawEvents(data) {
  const list = document.getElementById("events");
  const line = document.getElementById("timeline");
  clear(list);
  clear(line);
  const now = data.generated_at, span = 300;
  const left = 16, right = 384, at = (ago) => right - (ago / span) * (right - left);
  line.appendChild(svg("line", { x1: left, y1: 24, x2: right, y2: 24, class: "axis" }));
  for (let m = 0; m <= 5; m++) {
    line.appendChild(svg("text", { x: at(m * 60), y: 50, class: "tick" }, m ? `-${m} min` : "now"));
  }
  for (const e of data.events) {
    const x = at(now - e.at);
    if (x >= left) {
      const mark = svg("circle", { cx: x, cy: 24, r: 7, class: "event-mark " + e.kind });
      mark.appendChild(svg("title", {}, e.detail));
      line.appendChild(mark);
    }
  }
  if (!data.events.length) { list.appendChild(el("li", { class: "muted" }, "no failover seen")); return; }
  for (const e of data.events.slice(0, 30)) {
    const li = el("li", { class: "event " + e.kind, "data-kind": e.kind });
    li.appendChild(el("time", {}, clock(e.at)));
    li.appendChild(document.createTextNode(e.detail));
    list.appendChild(li);
  }
}

function drawTargets(data) {
  const tbody = document.querySelector("#targets tbody");
  clear(tbody);
  if (!data.targets.length) { emptyRow(tbody, 5, "nothing to scrape"); return; }
  for (const t of data.targets) {
    const tr = el("tr", { "data-state": t.state });
    cell(tr, t.name);
    cell(tr, t.kind);
    cell(tr, t.cluster);
    cell(tr, t.state === "up" ? "up" : `unreachable since ${clock(t.since)}`, t.state === "up" ? "ok" : "bad");
    cell(tr, t.state === "up" ? t.url : t.error);
    tbody.appendChild(tr);
  }
}

function draw(data) {
  drawWarnings(data);
  drawMap(data);
  drawServices(data);
  drawPeers(data);
  drawPairs(data);
  drawEvents(data);
  drawTargets(data);
  const status = document.getElementById("status");
  status.className = "status";
  status.textContent = `updated ${clock(data.generated_at)} · ${data.targets.length} targets`;
  if (firstData) {
    firstData = false;
    performance.mark("isthmus-first-data");
    document.body.dataset.loaded = "1";
  }
}

async function poll() {
  try {
    const response = await fetch("/api/v1/overview", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.className = "status error";
    status.textContent = `control plane not answering (${err.message}); retrying`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
