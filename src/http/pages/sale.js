"use strict";
const saleId = decodeURIComponent(location.pathname.split("/").pop());
const $ = (id) => document.getElementById(id);
const words = {
  sold_out: "Sold out. Keep this page open: units come back when holds expire.",
  insufficient_stock: "Not that many left. Try a smaller quantity.",
  limit_exceeded: "You have reached the limit per customer for this sale.",
  rate_limited: "Too many requests. Please wait a moment.",
  sale_not_live: "The sale is not live right now.",
  hold_expired: "Your hold expired before it was confirmed.",
  reservation_not_held: "This hold is no longer active.",
  reservation_not_found: "That hold was not found.",
  already_confirmed: "This hold was already paid with another payment.",
  unauthorized: "Please sign in (paste your token below).",
  unavailable: "The shop is busy. Please try again in a moment.",
  invalid_request: "That request was not valid.",
};
let clockOffset = 0;        // server time minus device time, from server_time
let sale = null, hold = null, blockedUntil = 0;
// Behind a waiting room: its public view, the buyer's place, and when the
// buyer's turn is expected (on the server's clock).
let room = null, place = null, etaAt = 0;
const salePath = `/v1/sales/${encodeURIComponent(saleId)}`;

// The token lives in the fragment or session storage, never in a query string.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  sessionStorage.setItem("flashsale-token", fragment.get("token"));
  history.replaceState(null, "", location.pathname);
}
$("token").value = sessionStorage.getItem("flashsale-token") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("flashsale-token", $("token").value.trim()));
// Another sign-in is another buyer, with a place of their own (or none).
$("token").addEventListener("change", () => {
  if (!sale || !sale.queue) return;
  place = null;
  refreshPlace();
});
if (!$("token").value) $("identity").open = true;

function now() { return Date.now() + clockOffset; }
function say(text, good) { $("message").textContent = text; $("message").className = good ? "good" : "bad"; }
function fmt(ms) {
  if (ms <= 0) return "0:00";
  const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
  const m = Math.floor(s / 60) % 60, r = s % 60, two = (n) => String(n).padStart(2, "0");
  const clock = (h || d ? (d ? two(h) : h) + ":" + two(m) : m) + ":" + two(r);
  return d ? `${d} d ${clock}` : clock;
}
function when(ms) {
  const d = new Date(ms);
  return d.toDateString() === new Date(now()).toDateString()
    ? d.toLocaleTimeString(undefined, { timeStyle: "short" })
    : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
function money(cents, currency) {
  try { return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100); }
  catch { return (cents / 100).toFixed(2) + " " + currency; }
}

function show(s) {
  sale = Object.assign(sale || {}, s);
  if (s.server_time) clockOffset = Date.parse(s.server_time) - Date.now();
  $("status").textContent = { scheduled: "Coming soon", live: "Live now", paused: "Paused", sold_out: "Sold out", ended: "Ended" }[sale.status] || sale.status;
  $("available").textContent = sale.stock.available;
  $("stock-detail").textContent = `${sale.stock.held} on hold · ${sale.stock.sold} sold · ${sale.stock.total} in all`;
  updateButtons();
}
// Behind a waiting room, only an admitted buyer may reserve: the server
// refuses a reserve without the admission anyway.
function gated() {
  return !!(sale && sale.queue) && !(place && place.status === "admitted" && place.admission);
}
function updateButtons() {
  const waiting = now() < blockedUntil;
  // An empty card says nothing; a refused join still shows its message.
  $("buy-row").hidden = gated();
  $("buy").hidden = gated() && !$("message").textContent;
  $("reserve").disabled = waiting || !sale || sale.status !== "live";
  $("reserve").textContent = waiting ? "Wait " + Math.ceil((blockedUntil - now()) / 1000) + " s" : "Reserve";
}

async function call(method, path, body, extraHeaders) {
  const headers = Object.assign({ "Content-Type": "application/json" }, extraHeaders || {});
  const token = $("token").value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const retry = Number(res.headers.get("Retry-After") || 0);
    if (retry > 0) blockedUntil = now() + retry * 1000;
    throw Object.assign(new Error(words[data.code] || data.detail || "Something went wrong."), { code: data.code, problem: data });
  }
  return data;
}

function showHold() {
  $("hold").hidden = !hold;
  if (!hold) return;
  $("hold-qty").textContent = hold.quantity;
  $("hold-status").textContent = hold.status;
  const live = hold.status === "held";
  $("confirm").disabled = !live; $("release").disabled = !live;
}

$("reserve").addEventListener("click", async () => {
  say("");
  const headers = { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Math.random()) };
  const admitted = sale && sale.queue && place && place.admission;
  if (admitted) headers["Admission-Token"] = place.admission.token;
  try {
    hold = await call("POST", `/v1/sales/${encodeURIComponent(saleId)}/reservations`,
      { quantity: Math.max(1, Number($("quantity").value) || 1) }, headers);
    say("Reserved! Confirm before the timer runs out.", true);
    // The hold used the admission up in the same step on the server.
    if (admitted) { place.status = "used"; delete place.admission; }
  } catch (e) {
    say(e.message);
    // The admission may have expired or gone: ask the room where we stand.
    if (e.code === "admission_invalid" || e.code === "admission_required") await refreshPlace();
  }
  showHold(); renderRoom(); updateButtons();
});
$("confirm").addEventListener("click", async () => {
  try {
    // One payment reference per hold: a retry (a lost answer, a second
    // click) sends the same one, so it is the same order and never a 409.
    hold.paymentRef = hold.paymentRef ||
      "demo-" + (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(16).slice(2));
    const order = await call("POST", `/v1/reservations/${encodeURIComponent(hold.id)}/confirm`, { payment_ref: hold.paymentRef });
    hold.status = "confirmed";
    say(`Paid: order ${order.order_id}.`, true);
  } catch (e) {
    if (e.code === "already_confirmed" && e.problem.order) {
      // Another payment confirmed this hold first: show the order it made.
      hold.status = "confirmed";
      say(`${e.message} Your order: ${e.problem.order.order_id} (payment ${e.problem.order.payment_ref}).`);
    } else {
      say(e.message);
      if (e.code === "hold_expired") hold.status = "expired";
    }
  }
  showHold();
});
$("release").addEventListener("click", async () => {
  try {
    hold = await call("DELETE", `/v1/reservations/${encodeURIComponent(hold.id)}`);
    say("Released. The units went back on sale.", true);
  } catch (e) { say(e.message); }
  showHold();
});

function setPlace(p) {
  place = p;
  etaAt = p.eta_seconds == null ? 0 : Date.parse(p.server_time) + p.eta_seconds * 1000;
}
async function loadPlace() {
  if (!$("token").value.trim()) { place = null; return; }
  try { setPlace(await call("GET", `${salePath}/queue/me`)); }
  catch (e) { if (e.code === "not_in_queue") place = null; else throw e; }
}
async function refreshPlace() {
  try { await loadPlace(); $("room-note").textContent = ""; }
  catch (e) { $("room-note").textContent = e.message; }
  renderRoom(); updateButtons();
}

$("join").addEventListener("click", async () => {
  say("");
  $("join").disabled = true;
  try {
    const t = await call("POST", `${salePath}/queue`);
    setPlace(Object.assign({ position: null, ahead: null, eta_seconds: null }, t));
    await loadPlace();
  } catch (e) {
    say(e.message);
    if (e.code === "unauthorized") $("identity").open = true;
  }
  $("join").disabled = false;
  renderRoom(); updateButtons();
});

function renderRoom() {
  if (!sale || !sale.queue) return;
  $("room").hidden = false;
  const t = now(), opens = Date.parse(sale.queue.opens_at), starts = Date.parse(sale.starts_at);
  const ended = sale.status === "ended" || t >= Date.parse(sale.ends_at);
  // The server counts an admission past its deadline as expired; so does the page, without waiting for a poll.
  if (place && place.status === "admitted" && place.admission && Date.parse(place.admission.expires_at) <= t) {
    place.status = "expired"; delete place.admission; updateButtons();
  }
  const st = place ? place.status : null;
  let text = "", join = false;
  if (!place) {
    if (t < opens) text = `The waiting room opens at ${when(opens)} (in ${fmt(opens - t)}).`;
    else if (ended) text = "The sale has ended.";
    else {
      join = true;
      text = t < starts
        ? "The waiting room is open. Everyone who joins before the start gets a place drawn at random at the start."
        : "The waiting room is open. Join to get the next place in line.";
    }
  } else if (st === "waiting") {
    text = place.position == null ? "You are in the waiting room. Your place is drawn at the start."
      : place.ahead ? `You are in line: ${place.ahead} ahead of you.` : "You are next in line.";
  } else if (st === "admitted") {
    text = `It is your turn! Reserve within ${fmt(Date.parse(place.admission.expires_at) - t)}.`;
  } else if (st === "expired") {
    join = !ended;
    text = "Your turn passed: the admission expired before a reserve." + (join ? " Join again for a new place at the back of the line." : "");
  } else if (st === "used") {
    text = "Your admission was used for your hold.";
    join = !ended && !(hold && hold.status === "held");
  }
  $("room-status").textContent = text;
  $("join-row").hidden = !join;
  $("join").textContent = place ? "Join again" : "Join the waiting room";

  $("room-place").hidden = !place;
  if (place) {
    $("room-ticket").textContent = place.ticket;
    $("room-position").textContent = place.position == null ? "drawn at the start" : place.position + 1;
    $("room-ahead").textContent = place.ahead == null ? "–" : place.ahead;
    $("room-eta").textContent = st === "admitted" ? "now"
      : st !== "waiting" || !etaAt ? "–"
      : etaAt > t ? "about " + fmt(etaAt - t) : "any moment now";
  }
  const sha = room && room.seed_sha256, seed = room && room.seed;
  $("room-sha").textContent = sha || "published when the room opens";
  $("room-sha").className = sha ? "hex" : "";
  $("room-seed").textContent = seed || "published at the start";
  $("room-seed").className = seed ? "hex" : "";
  if (room && room.seed && place && place.position != null) {
    const members = room.members === 1 ? "1 member" : `${room.members} members`;
    $("room-check").textContent = place.ticket < room.members
      ? `${room.permutation} of this seed, ${members} and your ticket ${place.ticket} gives position ${place.position} (counted from 0, so place ${place.position + 1}).`
      : `you joined after the start: the ${members} drawn at the start come first, then later tickets in order of arrival.`;
  }
}

// One loop polls the room: the public view until the seal publishes the
// seed, and the buyer's place while it can still change. It slows down
// when the server asks for it (Retry-After).
async function pollRoom() {
  const t = now(), ended = sale.status === "ended";
  const unsealed = !room || (!room.seed && !ended && t >= Date.parse(sale.queue.opens_at));
  const active = place && (place.status === "waiting" || place.status === "admitted");
  try {
    if (unsealed) room = await call("GET", `${salePath}/queue`);
    if (active) await loadPlace();
    $("room-note").textContent = "";
  } catch (e) { $("room-note").textContent = e.message; }
  renderRoom(); updateButtons();
  setTimeout(pollRoom, Math.max(nextPoll(), blockedUntil - now()));
}

// Milliseconds to the next poll. Nothing changes for a buyer far back in
// line, or in a room long before its seal: a crowd of them polling every
// 1.5 s would cost the gateways as much as the sale itself. The wait is a
// quarter of the time left (to the seal, or to the buyer's turn), between
// 1.5 s and 30 s, and never more than a quarter of an admission's lifetime,
// so a turn is seen long before its admission expires. A random part keeps
// the crowd from polling in step at the seal.
function nextPoll() {
  const t = now(), starts = Date.parse(sale.starts_at);
  let left = Infinity;
  if (!(room && room.seed) && t < starts) left = starts - t;
  if (place && place.status === "waiting" && etaAt) left = Math.min(left, etaAt - t);
  if (place && place.status === "admitted" || left === Infinity) left = 0;
  const cap = Math.min(30000, sale.queue.admission_seconds * 250);
  const wait = Math.max(1500, Math.min(left / 4, cap));
  return wait + Math.random() * Math.min(2000, wait / 2);
}

function tick() {
  renderRoom();
  if (sale) {
    const toStart = Date.parse(sale.starts_at) - now();
    $("countdown-label").textContent = toStart > 0 ? "Starts in" : (sale.status === "ended" ? "Ended" : "Ends in");
    $("countdown").textContent = toStart > 0 ? fmt(toStart) : fmt(Date.parse(sale.ends_at) - now());
  }
  if (hold && hold.status === "held") {
    const left = Date.parse(hold.expires_at) - now();
    $("hold-left").textContent = fmt(left);
    if (left <= 0) { hold.status = "expired"; say(words.hold_expired); showHold(); }
  }
  updateButtons();
}
setInterval(tick, 250);

(async () => {
  try {
    const s = await call("GET", `/v1/sales/${encodeURIComponent(saleId)}`);
    $("name").textContent = s.name; document.title = s.name;
    $("price").textContent = money(s.price_cents, s.currency);
    show(s); tick();
    if (s.queue) refreshPlace().then(pollRoom);
  } catch (e) { $("status").textContent = e.code === "sale_not_found" ? "No such sale." : e.message; return; }
  const events = new EventSource(`/v1/sales/${encodeURIComponent(saleId)}/stream`);
  events.addEventListener("stock", (m) => show(JSON.parse(m.data)));
})();
