// The ncf web page: plain JavaScript against the service's /v1 API (no build step, no CDN).
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
let current = null;  // the user shown

// with `ncf serve --api-key`, open the page as /#key=THE_KEY: the key stays in this tab
// (sessionStorage), is never part of a URL sent to the server, and goes out as X-API-Key
const fragmentKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (fragmentKey) {
  sessionStorage.setItem("ncf-api-key", fragmentKey);
  history.replaceState(null, "", location.pathname + location.search);
}
const apiKey = sessionStorage.getItem("ncf-api-key");

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (apiKey) opts.headers["x-api-key"] = apiKey;
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.message || `${method} ${path}: HTTP ${r.status}`);
  return data;
}

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

function label(x) {
  return x.title ? `${x.title}` : `item ${x.item}`;
}

// one list item: the title records an interaction, "similar" shows the item's neighbours
function itemRow(x, withScore) {
  const li = document.createElement("li");
  li.dataset.item = String(x.item);
  const t = document.createElement("span");
  t.className = "title";
  t.textContent = label(x);
  t.title = `record an interaction of the user with item ${x.item}`;
  t.addEventListener("click", () => click(x.item));
  li.appendChild(t);
  if (withScore && typeof x.score === "number") {
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = x.utility !== undefined && x.utility !== null
      ? `score ${x.score.toFixed(3)} · utility ${x.utility.toFixed(3)}` : `score ${x.score.toFixed(3)}`;
    li.appendChild(s);
  }
  const a = document.createElement("a");
  a.className = "sim";
  a.textContent = "similar";
  a.addEventListener("click", () => similar(x.item));
  li.appendChild(a);
  return li;
}

function fill(id, items, withScore, fresh) {
  const ol = $(id);
  ol.replaceChildren(...items.map((x) => {
    const li = itemRow(x, withScore);
    if (fresh && !fresh.has(String(x.item))) li.classList.add("fresh");
    return li;
  }));
}

async function show(user) {
  current = user;
  const url = new URL(window.location);
  url.searchParams.set("user", user);
  window.history.replaceState(null, "", url);
  await refresh(null);
}

async function refresh(before) {
  if (current === null) return;
  const u = encodeURIComponent(current);
  const rerank = $("rerank").checked ? "&rerank=true" : "";
  try {
    const [recs, hist] = await Promise.all([
      api("GET", `/v1/users/${u}/recommendations?k=10${rerank}`),
      api("GET", `/v1/users/${u}/history?limit=50`),
    ]);
    fill("recs", recs.items, true, before);
    const mode = $("mode");
    mode.textContent = recs.fallback ? "popular items (unknown user)" : (recs.reranked ? "personalised, re-ranked" : "personalised");
    mode.className = "badge " + (recs.fallback ? "fallback" : "personal");
    fill("recorded", hist.recorded, false);
    fill("history", hist.train, false);
    $("history").dataset.empty = hist.recorded.length ? "" : "No history: the user is new to the model.";
    status(`user ${recs.user}: ${hist.known ? "known to the model" : "new to the model"}, `
      + `${hist.n_train} training items, ${hist.recorded.length} recorded here`);
  } catch (e) {
    clearUser();  // not the previous user's lists under its badge
    status(e.message, true);
  }
}

// the panels of a user, emptied (their hints show again) when no user can be shown
function clearUser() {
  current = null;
  for (const id of ["recs", "recorded", "history"]) $(id).replaceChildren();
  $("history").dataset.empty = "The user's history shows here.";
  $("mode").textContent = "";
  $("mode").className = "badge";
}

async function click(item) {
  if (current === null) { status("pick a user first", true); return; }
  const before = new Set([...$("recs").children].map((li) => li.dataset.item));
  try {
    await api("POST", `/v1/users/${encodeURIComponent(current)}/interactions`, { item });
    await refresh(before);
  } catch (e) {
    status(e.message, true);
  }
}

async function similar(item) {
  try {
    const r = await api("GET", `/v1/items/${encodeURIComponent(item)}/similar?k=10`);
    fill("similar", r.items, true);
    $("similar-to").textContent = `to item ${item}`;
  } catch (e) {
    status(e.message, true);
  }
}

async function start() {
  try {
    info = await api("GET", "/v1/info");
  } catch (e) {
    status(e.message, true);
    return;
  }
  $("model").textContent = `${info.model} · ${info.n_users} users · ${info.n_items} items · ${info.run}`;
  $("users").replaceChildren(...info.sample_users.map((u) => {
    const o = document.createElement("option");
    o.value = String(u);
    return o;
  }));
  if (!info.rerank) {
    $("rerank").disabled = true;
    $("rerank-label").classList.add("disabled");
    $("rerank-label").title = info.rerank_reason || "no rerank.json in this run";
  }
  $("pick").addEventListener("submit", (ev) => { ev.preventDefault(); show($("user").value.trim()); });
  $("visitor").addEventListener("click", () => {
    const id = info.visitor_prefix + Math.floor(Math.random() * 1e6);
    $("user").value = id;
    show(id);
  });
  $("rerank").addEventListener("change", () => refresh(null));
  const wanted = new URL(window.location).searchParams.get("user");
  if (wanted) {
    $("user").value = wanted;
    show(wanted);
  } else if (info.sample_users.length) {
    status(`pick a user: e.g. ${info.sample_users[0]} (the list holds ${info.sample_users.length} of them), `
      + "or a New visitor");
  }
}

start();
