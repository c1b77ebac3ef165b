// The qkd-node dashboard: renders the snapshots of the admin listener's live feed
// (`events`, server-sent events, one snapshot a second). Plain JavaScript, no framework, no
// build step. Text goes into the page through textContent only, never as HTML. The state the
// page shows is also in the DOM as data attributes (data-node, data-link, data-state), which is
// what the headless-browser test reads.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAP_W = 640;
const MAP_H = 360;

// Content-Security-Policy violations are counted on <body>: there must be none.
document.addEventListener("securitypolicyviolation", (e) => {
  const b = document.body;
  b.dataset.cspViolations = String(Number(b.dataset.cspViolations || "0") + 1);
  b.dataset.cspLast = e.violatedDirective + " " + (e.blockedURI || "");
});

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtRate(bps) {
  if (bps === null || bps === undefined) return "n/a";
  const units = [["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]];
  for (const [u, f] of units) if (bps >= f) return (bps / f).toFixed(bps >= 10 * f ? 1 : 2) + " " + u;
  return bps.toFixed(0) + " bit/s";
}

function fmtBits(bits) {
  if (bits === null || bits === undefined) return "n/a";
  const units = [["GB", 8e9], ["MB", 8e6], ["kB", 8e3]];
  for (const [u, f] of units) if (bits >= f) return (bits / f).toFixed(1) + " " + u;
  return (bits / 8).toFixed(0) + " B";
}

function fmtQber(q) {
  return q === null || q === undefined ? "n/a" : (q * 100).toFixed(2) + " %";
}

function fmtAgo(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  return Math.floor(s / 86400) + " d ago";
}

// Node positions: on a circle (an ellipse filling the map), this node at the left, the rest in
// order of their IDs, so that the picture is stable from one snapshot to the next.
function layout(nodes, self) {
  const ids = nodes.map((n) => n.id);
  const pos = {};
  const n = ids.length;
  if (n === 0) return pos;
  if (n === 1) {
    pos[ids[0]] = [MAP_W / 2, MAP_H / 2];
    return pos;
  }
  const start = Math.max(0, ids.indexOf(self));
  const rx = MAP_W / 2 - 70;
  const ry = MAP_H / 2 - 45;
  for (let i = 0; i < n; i++) {
    const id = ids[(start + i) % n];
    const a = Math.PI + (2 * Math.PI * i) / n;
    pos[id] = [MAP_W / 2 + rx * Math.cos(a), MAP_H / 2 + ry * Math.sin(a)];
  }
  return pos;
}

function renderMap(s) {
  const map = document.getElementById("map");
  const pos = layout(s.nodes, s.node);
  const parts = [];
  const links = s.links.filter((l) => pos[l.ends[0]] && pos[l.ends[1]]);
  const labelled = links.length <= 16;
  for (const l of links) {
    const [x1, y1] = pos[l.ends[0]];
    const [x2, y2] = pos[l.ends[1]];
    const line = svg("line", {
      x1, y1, x2, y2,
      class: "link " + l.state + (l.local ? " local" : ""),
      "data-link": l.id,
      "data-state": l.state,
    });
    line.appendChild(svg("title", {}, l.id + ": " + l.state + (l.reason ? " (" + l.reason + ")" : "")));
    parts.push(line);
    if (labelled) {
      // Beside the line's middle, on the side away from the map's centre.
      const len = Math.hypot(x2 - x1, y2 - y1) || 1;
      let [nx, ny] = [-(y2 - y1) / len, (x2 - x1) / len];
      const [mx, my] = [(x1 + x2) / 2, (y1 + y2) / 2];
      if (nx * (mx - MAP_W / 2) + ny * (my - MAP_H / 2) < 0) [nx, ny] = [-nx, -ny];
      parts.push(svg("text", { x: mx + nx * 16, y: my + ny * 16 + 4, class: "link-label" }, l.id));
    }
  }
  const r = s.nodes.length > 24 ? 13 : 24;
  for (const n of s.nodes) {
    const [x, y] = pos[n.id];
    const g = svg("g", { class: "node " + n.state, "data-node": n.id, "data-state": n.state });
    g.appendChild(svg("circle", { cx: x, cy: y, r }));
    g.appendChild(svg("text", { x, y }, n.id));
    g.appendChild(svg("title", {}, n.id + (n.state === "self" ? " (this node)" : n.state === "unreachable" ? " (no advert held)" : "")));
    parts.push(g);
  }
  if (s.nodes.length === 0) {
    parts.push(svg("text", { x: MAP_W / 2, y: MAP_H / 2, class: "empty" }, "No link-state adverts yet"));
  }
  map.replaceChildren(...parts);
  const up = s.links.filter((l) => l.state === "up").length;
  const reachable = s.nodes.filter((n) => n.state !== "unreachable").length;
  document.getElementById("map-summary").textContent =
    s.nodes.length + " nodes (" + reachable + " advertising), " + s.links.length + " links (" + up + " up, " +
    (s.links.length - up) + " not up). Thicker lines are this node's own links.";
}

function renderAlarms(s) {
  const list = document.getElementById("alarms");
  const items = s.alarms.map((a) => {
    const li = el("li", "alarm " + a.severity);
    li.dataset.alarm = a.alarm;
    li.dataset.subject = a.subject;
    const l1 = el("div", "line1");
    l1.append(el("span", "kind", a.alarm), el("span", "sev", a.severity));
    const l2 = el("div", "line1");
    l2.append(el("span", "subject", a.subject), el("span", "since", fmtAgo(a.raised_at, s.at)));
    li.append(l1, l2, el("div", "cause", a.cause));
    return li;
  });
  if (items.length === 0) items.push(el("li", "none", "\u2713 No active alarms"));
  list.replaceChildren(...items);
  const count = document.getElementById("alarm-count");
  count.textContent = String(s.alarms.length);
  count.dataset.count = String(s.alarms.length);
  count.dataset.critical = String(s.alarms.some((a) => a.severity === "critical"));
}

// A sparkline of `values` (null where unknown) over `times`, with an optional dashed limit.
function sparkline(cls, times, values, limit) {
  const w = 300;
  const h = 44;
  const box = svg("svg", { class: "spark " + cls, viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" });
  const pts = [];
  for (let i = 0; i < values.length; i++) if (values[i] !== null && values[i] !== undefined) pts.push([times[i], values[i]]);
  if (pts.length === 0) {
    box.appendChild(svg("text", { x: 4, y: h / 2 + 4, class: "nodata" }, "not reported"));
    return box;
  }
  const t0 = Math.min(...pts.map((p) => p[0]));
  const t1 = Math.max(...pts.map((p) => p[0]));
  let vmax = Math.max(...pts.map((p) => p[1]));
  if (limit !== undefined) vmax = Math.max(vmax, limit * 1.15);
  if (vmax <= 0) vmax = 1;
  const x = (t) => (t1 === t0 ? w : ((t - t0) / (t1 - t0)) * w);
  const y = (v) => h - 2 - (v / vmax) * (h - 6);
  const line = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
  if (pts.length === 1) line.unshift("0," + y(pts[0][1]).toFixed(1));
  const first = line[0].split(",")[0];
  const last = line[line.length - 1].split(",")[0];
  box.appendChild(svg("polygon", { class: "area", points: first + "," + h + " " + line.join(" ") + " " + last + "," + h }));
  box.appendChild(svg("polyline", { class: "line", points: line.join(" ") }));
  if (limit !== undefined && limit <= vmax) {
    box.appendChild(svg("line", { class: "limit", x1: 0, x2: w, y1: y(limit), y2: y(limit) }));
  }
  return box;
}

function renderLinks(s) {
  const box = document.getElementById("links");
  const cards = s.links.filter((l) => l.local).map((l) => {
    const card = el("div", "link-card");
    card.dataset.link = l.id;
    card.dataset.state = l.state;
    const head = el("div", "head");
    const name = el("div");
    const peer = l.ends[0] === s.node ? l.ends[1] : l.ends[0];
    name.append(el("div", "name", l.id), el("div", "peer", "to " + peer));
    head.append(name, el("span", "state " + l.state, l.state));
    card.appendChild(head);
    if (l.reason && l.state !== "up") card.appendChild(el("div", "reason", l.reason));
    const times = l.history.map((p) => p.t);
    const q = el("div", "spark-row");
    const ql = el("div");
    ql.append(el("div", "label", "QBER"), el("div", "value", fmtQber(l.qber)));
    q.append(ql, sparkline("qber", times, l.history.map((p) => p.qber), s.thresholds.qber_max));
    const r = el("div", "spark-row");
    const rl = el("div");
    rl.append(el("div", "label", "Key rate"), el("div", "value", fmtRate(l.rate_bps)));
    r.append(rl, sparkline("rate", times, l.history.map((p) => p.rate_bps)));
    const foot = el("div", "foot");
    foot.append(
      el("span", "", "available link key: " + fmtBits(l.available_bits)),
      el("span", "", "QBER alarm above " + fmtQber(s.thresholds.qber_max) + " (dashed)"),
    );
    card.append(q, r, foot);
    return card;
  });
  if (cards.length === 0) cards.push(el("div", "empty-note", "This node has no QKD links."));
  box.replaceChildren(...cards);
}

function renderPools(s) {
  const box = document.getElementById("pools");
  const rows = s.pools.map((p) => {
    const cap = Math.max(1, p.capacity);
    const row = el("div", "pool" + (p.keys === 0 ? " empty" : p.keys < s.thresholds.pool_min_keys ? " low" : ""));
    row.dataset.pair = p.master + "->" + p.slave;
    row.dataset.keys = String(p.keys);
    const head = el("div", "head");
    head.append(el("span", "pair", p.master + " \u2192 " + p.slave), el("span", "level", p.keys + " / " + p.capacity + " keys"));
    const gauge = el("div", "gauge");
    gauge.setAttribute("role", "meter");
    gauge.setAttribute("aria-valuemin", "0");
    gauge.setAttribute("aria-valuemax", String(p.capacity));
    gauge.setAttribute("aria-valuenow", String(p.keys));
    const fill = el("div", "fill");
    // CSSOM, not a style attribute: allowed by the Content-Security-Policy.
    fill.style.width = Math.min(100, (100 * p.keys) / cap).toFixed(1) + "%";
    const min = el("div", "min");
    min.style.left = Math.min(100, (100 * s.thresholds.pool_min_keys) / cap).toFixed(1) + "%";
    min.title = "pool_low alarm below " + s.thresholds.pool_min_keys + " keys";
    gauge.append(fill, min);
    row.append(head, gauge);
    return row;
  });
  if (rows.length === 0) rows.push(el("div", "empty-note", "No SAE pair has its master attached here."));
  box.replaceChildren(...rows);
}

function render(s) {
  document.getElementById("node-id").textContent = s.node;
  document.getElementById("kme-id").textContent = s.kme_id;
  document.getElementById("simulated").hidden = !s.simulated;
  document.title = "QKD node " + s.node + (s.alarms.length ? " (" + s.alarms.length + " alarms)" : "");
  renderMap(s);
  renderAlarms(s);
  renderLinks(s);
  renderPools(s);
  document.getElementById("updated").textContent = "updated " + new Date(s.at).toLocaleTimeString();
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
}

function setFeed(state, text) {
  const f = document.getElementById("feed");
  f.dataset.state = state;
  f.textContent = text;
}

let lastSnapshot = 0;
let period = 1000;

function connect() {
  const es = new EventSource("events");
  es.addEventListener("snapshot", (ev) => {
    const s = JSON.parse(ev.data);
    period = s.period_ms || period;
    lastSnapshot = Date.now();
    setFeed("live", "live");
    render(s);
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (too many viewers) or the node went away: try again later.
      setFeed("reconnecting", "reconnecting\u2026");
      setTimeout(connect, 5000);
    } else {
      setFeed("reconnecting", "reconnecting\u2026");
    }
  };
}

// A feed that went quiet is shown as stale, whatever the browser thinks of the connection.
setInterval(() => {
  if (lastSnapshot && Date.now() - lastSnapshot > 3 * period) setFeed("stale", "stale");
}, 1000);

connect();
