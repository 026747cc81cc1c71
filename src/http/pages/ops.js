"use strict";
const $ = (id) => document.getElementById(id);
const OUTCOMES = { held: "#0a7a2f", sold_out: "#888", limit_exceeded: "#d08000", rate_limited: "#b00020", unavailable: "#6a1b9a" };
// Built with the DOM: the page's CSP refuses a style attribute (markup
// with one, innerHTML included) but lets a script set a style property.
for (const [k, c] of Object.entries(OUTCOMES)) {
  const mark = document.createElement("b");
  mark.style.color = c;
  mark.textContent = "■";
  const item = document.createElement("span");
  item.append(mark, " " + k);
  $("legend").append(item);
}
$("token").value = sessionStorage.getItem("flashsale-admin") || "";
$("token").addEventListener("change", () => { sessionStorage.setItem("flashsale-admin", $("token").value.trim()); webhooks(); });

function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

// Prometheus text: name{labels} value  ->  [{name, labels, value}]
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/);
    if (!m) continue;
    const labels = {};
    (m[3] || "").replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, k, v) => { labels[k] = v; });
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

let last = null, rounds = 0; const history = [];
async function refresh() {
  let sales = [], metrics = [];
  try {
    sales = (await (await fetch("/v1/sales")).json()).sales || [];
    metrics = parseMetrics(await (await fetch("/metrics")).text());
  } catch (e) { $("message").textContent = "Cannot reach the gateway: " + e.message; return; }
  const per = (name, id) => metrics.filter((m) => m.name === name && m.labels.sale_id === id);
  const rows = sales.map((s) => {
    const pending = per("flashsale_outbox_pending", s.id)[0];
    const dead = per("flashsale_dead_letters", s.id)[0];
    const drift = per("flashsale_reconcile_drift", s.id);
    const kinds = drift.filter((d) => d.value > 0).map((d) => d.labels.kind);
    const recon = drift.length === 0 ? '<span class="muted">not yet</span>'
      : kinds.length ? `<span class="bad">${esc(kinds.join(", "))}</span>` : '<span class="ok">consistent</span>';
    const paused = s.status === "paused";
    return `<tr><td>${esc(s.id)}<div class="muted">${esc(s.name)}</div></td><td class="left">${esc(s.status)}</td>
      <td>${s.stock.available}</td><td>${s.stock.held}</td><td>${s.stock.sold}</td><td>${s.stock.total}</td>
      <td>${pending ? pending.value : "–"}</td><td class="${dead && dead.value > 0 ? "bad" : ""}">${dead ? dead.value : "–"}</td>
      <td class="left">${recon}</td>
      <td><button data-sale="${esc(s.id)}" data-act="${paused ? "resume" : "pause"}">${paused ? "Resume" : "Pause"}</button>
          <button data-sale="${esc(s.id)}" data-act="add">Add stock</button></td></tr>`;
  });
  $("sales").innerHTML = rows.join("") || '<tr><td colspan="10" class="left muted">No sales yet.</td></tr>';
  // Every fifth round: a Postgres read per viewer, not the live figures.
  if (rounds++ % 5 === 0) webhooks();

  const counts = {};
  for (const m of metrics) if (m.name === "flashsale_reservations_total") counts[m.labels.outcome] = m.value;
  const t = Date.now();
  if (last) {
    const dt = (t - last.t) / 1000, rate = {};
    for (const k of Object.keys(OUTCOMES)) rate[k] = Math.max(0, ((counts[k] || 0) - (last.counts[k] || 0)) / dt);
    history.push(rate); if (history.length > 120) history.shift();
  }
  last = { t, counts };
  draw();
}

// "3 s", "4 min", "2 h": how long the oldest pending delivery has waited.
function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

async function webhooks() {
  const token = $("token").value.trim();
  const none = (text) => `<tr><td colspan="6" class="left muted">${esc(text)}</td></tr>`;
  if (!token) { $("webhooks").innerHTML = none("Paste an admin token to see the endpoints."); return; }
  let list;
  try {
    const res = await fetch("/v1/webhooks", { headers: { Authorization: "Bearer " + token } });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) { $("webhooks").innerHTML = none(`Cannot list the endpoints: ${data.detail || res.status}`); return; }
    list = data.webhooks || [];
  } catch (e) { $("webhooks").innerHTML = none("Cannot reach the gateway: " + e.message); return; }
  $("webhooks").innerHTML = list.map((w) => {
    const d = w.deliveries || {};
    const state = w.status === "enabled" ? '<span class="ok">enabled</span>'
      : `<span class="bad">disabled${w.disabled_reason ? " (" + esc(w.disabled_reason) + ")" : ""}</span>`;
    return `<tr><td>${esc(w.url)}<div class="muted">${esc(w.id)}</div></td><td class="left">${state}</td>
      <td class="left">${w.events ? esc(w.events.join(", ")) : "every type"}</td>
      <td>${d.pending ?? "–"}</td><td class="${d.failed > 0 ? "bad" : ""}">${d.failed ?? "–"}</td>
      <td>${age(d.oldest_pending_at)}</td></tr>`;
  }).join("") || none("No endpoints registered.");
}

function draw() {
  const c = $("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...history.flatMap((r) => Object.values(r)));
  g.fillStyle = "#666"; g.font = "12px system-ui"; g.fillText(`${Math.round(max)}/s`, 4, 12);
  for (const [k, color] of Object.entries(OUTCOMES)) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    history.forEach((r, i) => {
      const x = (i / 119) * (c.width - 8) + 4, y = c.height - 4 - (r[k] / max) * (c.height - 20);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

$("sales").addEventListener("click", async (e) => {
  const b = e.target.closest("button"); if (!b) return;
  const token = $("token").value.trim();
  if (!token) { $("message").textContent = "Paste an admin token first."; $("token").focus(); return; }
  let body;
  if (b.dataset.act === "add") {
    const n = Number(prompt(`Units to add to ${b.dataset.sale} (negative removes)`, "10"));
    if (!Number.isInteger(n) || n === 0) return;
    body = { stock_delta: n };
  } else body = { paused: b.dataset.act === "pause" };
  const res = await fetch(`/v1/sales/${encodeURIComponent(b.dataset.sale)}`, {
    method: "PATCH", headers: { "Content-Type": "application/json", Authorization: "Bearer " + token }, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  $("message").textContent = res.ok ? `${b.dataset.sale}: done (audited).` : `${b.dataset.sale}: ${data.detail || res.status} (${data.code || "error"})`;
  refresh();
});

refresh(); setInterval(refresh, 1000);
