// The admin page. Signs in with an API key (kept in this tab's sessionStorage, never in a
// URL), then polls /api/stats and /api/nodes, tails topics through the JavaScript client,
// publishes and looks up presence. Whatever the server sends is put on the page as text
// (textContent), never parsed as HTML.

import { RateChart, formatRate } from "/admin/chart.js";

const KEY_STORAGE = "trio-gateway.admin.api-key";
// Milliseconds between polls: fresh enough to watch, two small requests per poll.
const POLL_INTERVAL = 1500;
// Seconds of history in the chart.
const CHART_SECONDS = 120;
// Messages kept in the tail; older ones are dropped from the bottom.
const TAIL_LIMIT = 200;

const $ = (id) => document.getElementById(id);

let apiKey = null;
let pollTimer = null;
let previousTotals = null; // {time, deliveries, publications} of the last poll
let tail = null; // {client, key} while tailing

const chart = new RateChart(
  $("rate-chart"),
  [
    { name: "deliveries", colour: "--deliveries" },
    { name: "publications", colour: "--publications" },
  ],
  CHART_SECONDS,
);

// --- the API key ---------------------------------------------------------------------------

async function api(path, init = {}) {
  const response = await fetch(path, {
    ...init,
    cache: "no-store",
    headers: { ...init.headers, authorization: `Bearer ${apiKey}` },
  });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

async function signIn(key) {
  apiKey = key;
  let answer;
  try {
    answer = await api("/api/stats");
  } catch {
    apiKey = null;
    $("sign-in-error").textContent = "The gateway did not answer; is it running?";
    return;
  }
  const { status, body } = answer;
  if (status !== 200) {
    apiKey = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("sign-in-error").textContent =
      status === 401
        ? "That is not an API key of this gateway (a JWT or a hook token is not one)."
        : `The gateway answered ${status}: ${body?.error ?? "no reason given"}`;
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  showStats(body);
  poll();
}

function signOut(message = "") {
  clearTimeout(pollTimer);
  pollTimer = null;
  stopTail();
  apiKey = null;
  previousTotals = null;
  sessionStorage.removeItem(KEY_STORAGE);
  chart.clear();
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("instance").textContent = "";
  $("api-key").value = "";
  $("sign-in-error").textContent = message;
}

// --- polling -------------------------------------------------------------------------------

async function poll() {
  try {
    const [stats, nodes] = await Promise.all([api("/api/stats"), api("/api/nodes")]);
    if (apiKey === null) return; // signed out meanwhile
    if (stats.status === 401) {
      signOut("The API key is no longer accepted.");
      return;
    }
    if (stats.status === 200) showStats(stats.body);
    if (nodes.status === 200) showNodes(nodes.body.nodes);
    const failed = [stats, nodes].find((answer) => answer.status !== 200);
    $("poll-error").textContent = failed
      ? `The gateway answered ${failed.status}: ${failed.body?.error ?? ""}`
      : "";
  } catch (error) {
    $("poll-error").textContent = `The gateway cannot be reached (${error.message}).`;
  }
  if (apiKey !== null) pollTimer = setTimeout(poll, POLL_INTERVAL);
}

function showStats(stats) {
  $("instance").textContent = `${stats.host} · ${stats.version} · instance ${stats.instance}`;
  $("connections").textContent = stats.connections;
  $("users").textContent = stats.users;

  // Rates from the totals' deltas between two polls, over the time that really passed.
  const now = performance.now();
  const totals = {
    time: now,
    deliveries: stats.totals.deliveries,
    publications: stats.totals.publications,
  };
  if (previousTotals !== null) {
    const seconds = (now - previousTotals.time) / 1000;
    const rate = (name) => Math.max(0, totals[name] - previousTotals[name]) / seconds;
    const values = { deliveries: rate("deliveries"), publications: rate("publications") };
    $("deliveries-rate").textContent = formatRate(values.deliveries);
    $("publications-rate").textContent = formatRate(values.publications);
    chart.add(now, values);
  }
  previousTotals = totals;

  fillTable(
    $("top-keys"),
    stats.top_keys.map((entry) => [entry.key, entry.subscribers]),
    "no subscriptions",
  );
}

function showNodes(nodes) {
  fillTable(
    $("nodes"),
    nodes.map((node) => [
      node.instance,
      node.host,
      node.pid,
      node.version,
      formatUptime(node.uptime),
      node.connections,
      node.broker.ok ? `${node.broker.kind} ok` : `${node.broker.kind} DOWN`,
      node.draining ? "yes" : "no",
    ]),
    "no instances",
  );
}

function fillTable(tbody, rows, empty) {
  const columns = tbody.closest("table").querySelectorAll("th").length;
  const trs = rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      if (typeof cell === "number") td.className = "number";
      tr.append(td);
    }
    return tr;
  });
  if (trs.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = columns;
    td.className = "muted";
    td.textContent = empty;
    tr.append(td);
    trs.push(tr);
  }
  tbody.replaceChildren(...trs);
}

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const parts = [
    [Math.floor(s / 86400), "d"],
    [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "m"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([value]) => value > 0);
  return parts
    .slice(first === -1 ? 3 : first)
    .map(([value, unit]) => `${value}${unit}`)
    .join(" ");
}

// --- the live tail -------------------------------------------------------------------------

async function startTail(key) {
  stopTail();
  $("tail-error").textContent = "";
  $("tail").replaceChildren();
  // Loaded on first use: the rest of the page works without the client.
  const { connect } = await import("/api/client.js");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = connect(`${scheme}//${location.host}/api/ws`, {
    token: apiKey,
    onMessage: showMessage,
    onState: (state) => {
      $("tail-state").textContent = `(${key}: ${state})`;
    },
  });
  tail = { client, key };
  $("tail-stop").disabled = false;
  try {
    await client.subscribe(key);
  } catch (error) {
    if (tail?.client === client) stopTail();
    $("tail-error").textContent = `Cannot tail ${key}: ${error.message}`;
  }
}

function stopTail() {
  if (tail === null) return;
  tail.client.close();
  tail = null;
  $("tail-stop").disabled = true;
  $("tail-state").textContent = "";
}

function showMessage(frame) {
  const item = document.createElement("li");
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = new Date().toLocaleTimeString();
  meta.textContent =
    frame.type === "message"
      ? `${time}  ${frame.topic}  #${frame.offset}`
      : `${time}  ${frame.type ?? frame.event}`;
  const data = document.createElement("code");
  data.textContent = JSON.stringify(frame.type === "message" ? frame.data : frame);
  item.append(meta, data);
  const list = $("tail");
  list.prepend(item);
  while (list.children.length > TAIL_LIMIT) list.lastElementChild.remove();
}

// --- publish and presence ------------------------------------------------------------------

async function publish(topic, text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text; // not JSON: sent as a string
  }
  const result = $("publish-result");
  const { status, body } = await api("/api/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, data }),
  });
  result.className = status === 202 ? "ok" : "error";
  result.textContent =
    status === 202
      ? `Published on ${topic} at offset ${body.offsets[0]}.`
      : `Not published (${status}): ${body?.error ?? ""}`;
}

async function lookUpPresence(topic) {
  const result = $("presence-result");
  const list = $("presence-members");
  list.replaceChildren();
  const { status, body } = await api(`/api/presence/${encodeURIComponent(topic)}`);
  if (status !== 200) {
    result.className = "error";
    result.textContent =
      status === 404 ? "Presence is not tracked on this topic." : `${status}: ${body?.error ?? ""}`;
    return;
  }
  result.className = "";
  result.textContent = `${body.members.length} on ${body.topic}`;
  for (const member of body.members) {
    const item = document.createElement("li");
    const plural = member.connections === 1 ? "" : "s";
    const info = Object.keys(member.info ?? {}).length ? `  ${JSON.stringify(member.info)}` : "";
    item.textContent = `${member.user_id}  ${member.status}  ${member.connections} connection${plural}${info}`;
    list.append(item);
  }
}

// --- wiring --------------------------------------------------------------------------------

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (event) => {
    event.preventDefault();
    handler();
  });
}

onSubmit("sign-in-form", () => signIn($("api-key").value.trim()));
onSubmit("tail-form", () => startTail($("tail-topic").value.trim()));
onSubmit("publish-form", () => publish($("publish-topic").value.trim(), $("publish-data").value));
onSubmit("presence-form", () => lookUpPresence($("presence-topic").value.trim()));
$("tail-stop").addEventListener("click", stopTail);
$("sign-out").addEventListener("click", () => signOut());

const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved !== null) signIn(saved);
