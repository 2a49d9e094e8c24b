// The llmos console. Everything it does is a syscall made through the daemon's HTTP door
// (POST /api/syscalls/NAME, as the console's session process) or a read of its live feed
// (GET /api/live, server-sent events). Plain JavaScript, no dependencies, nothing fetched
// from anywhere but the daemon that served this page.
"use strict";

const TOKEN_KEY = "llmos-token";
const WINDOW_S = 120; // seconds of history the charts show
const PROC_REFRESH_MS = 2000;
const PALETTE = ["#2563eb", "#16a34a", "#ca8a04", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#0d9488", "#9333ea", "#4f46e5"];

const $ = (id) => document.getElementById(id);
const state = { token: null, snapshot: null, samples: [], rows: new Map(), liveAbort: null, procTimer: null, procPid: null };

// -- the token: taken from the URL once, kept for this browser session --------------------------

function takeToken() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash); // out of the address bar and history
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function logout(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.liveAbort) state.liveAbort.abort();
  show("login");
  $("login-error").textContent = reason || "";
}

// -- the daemon's API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, errno, message) { super(message); this.status = status; this.errno = errno; }
}

async function request(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${state.token}` });
  const resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (resp.status === 401) {
    logout("The daemon refused this token.");
    throw new ApiError(401, "EPERM", "the daemon refused the token");
  }
  return resp;
}

async function readJson(resp) {
  let body;
  try { body = await resp.json(); } catch (e) { throw new ApiError(resp.status, "EIO", `HTTP ${resp.status}`); }
  if (body && body.error) throw new ApiError(resp.status, body.error.errno || body.error.code || "EIO", body.error.message);
  if (!resp.ok) throw new ApiError(resp.status, "EIO", `HTTP ${resp.status}`);
  return body;
}

async function syscall(name, args = {}) {
  const resp = await request(`/api/syscalls/${encodeURIComponent(name)}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(args),
  });
  return (await readJson(resp)).result;
}

// -- the live feed -----------------------------------------------------------------------------------

async function followLive() {
  while (state.token) {
    const abort = new AbortController();
    state.liveAbort = abort;
    try {
      const resp = await request("/api/live", { signal: abort.signal, headers: { accept: "text/event-stream" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      $("link").classList.add("up");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(parseEvent(buffer.slice(0, end)));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      if (!state.token) return;
    }
    $("link").classList.remove("up");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function parseEvent(text) {
  let kind = "message", data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  return { kind, data: data ? JSON.parse(data) : null };
}

function onEvent({ kind, data }) {
  if (kind === "history") {
    state.samples = data || [];
  } else if (kind === "snapshot") {
    state.snapshot = data;
    const last = state.samples[state.samples.length - 1];
    if (data.sample && (!last || data.sample.time > last.time)) state.samples.push(data.sample);
    const horizon = Date.now() / 1000 - WINDOW_S - 5;
    while (state.samples.length && state.samples[0].time < horizon) state.samples.shift();
    render();
  } else if (kind === "error") {
    $("procs-error").textContent = `${data.errno}: ${data.message}`;
  }
}

// -- rendering ---------------------------------------------------------------------------------------

function show(which) {
  for (const id of ["login", "overview", "process"]) $(id).hidden = id !== which;
}

function render() {
  const snap = state.snapshot;
  if (!snap) return;
  const s = snap.stat;
  const rate = state.samples.length ? state.samples[state.samples.length - 1].tok_s : 0;
  $("model").textContent = `${s.model}${snap.model_loaded ? "" : " (not loaded yet)"} · ${s.policy}`;
  $("summary").textContent = `up ${fmtAge(s.uptime)} · ${s.processes} processes · batch ${s.running}/${s.max_batch}` +
    ` running, ${s.waiting} waiting · ${s.tokens_generated} tokens · ${rate.toFixed(1)} tok/s · KV ${mb(s.kv_bytes)} MB`;
  renderTable(snap);
  renderCharts();
  if (state.procPid !== null) renderProcFacts();
}

function renderTable(snap) {
  const body = $("procs").tBodies[0];
  const seen = new Set();
  for (const p of snap.procs) {
    seen.add(p.pid);
    let row = state.rows.get(p.pid);
    if (!row) {
      row = makeRow(p.pid);
      state.rows.set(p.pid, row);
    }
    const c = row.cells;
    c.name.textContent = p.name + (p.pid === snap.console_pid ? " (this console)" : "");
    c.state.textContent = p.state;
    c.state.className = `state ${p.state}`;
    c.nice.textContent = p.nice;
    c.tokens.textContent = p.prompt_tokens + p.generated_tokens;
    c.tokens.title = `${p.prompt_tokens} prompt + ${p.generated_tokens} generated`;
    c.rate.textContent = (p.tok_s || 0).toFixed(1);
    c.pages.textContent = p.pages == null ? "-" : p.pages;
    c.kv.textContent = mb(p.kv_bytes);
    c.age.textContent = fmtAge(p.age);
    setActions(row.actions, p);
    body.appendChild(row.tr); // keeps rows in pid order (snapshots are sorted)
  }
  for (const [pid, row] of state.rows) {
    if (!seen.has(pid)) { row.tr.remove(); state.rows.delete(pid); }
  }
}

function makeRow(pid) {
  const tr = document.createElement("tr");
  tr.dataset.pid = pid;
  const cell = (cls) => { const td = document.createElement("td"); if (cls) td.className = cls; tr.appendChild(td); return td; };
  const pidCell = cell("num");
  const link = document.createElement("a");
  link.href = `#/proc/${pid}`;
  link.textContent = pid;
  pidCell.appendChild(link);
  const name = cell();
  const stateCell = cell();
  const badge = document.createElement("span");
  stateCell.appendChild(badge);
  const cells = { name, state: badge, nice: cell("num"), tokens: cell("num"), rate: cell("num"), pages: cell("num"),
    kv: cell("num"), age: cell("num") };
  const actions = document.createElement("div");
  actions.className = "actions";
  cell("acts").appendChild(actions);
  return { tr, cells, actions };
}

// Buttons for a process: stop or cont, kill (press twice), nice. Rebuilt only when the state changes.
function setActions(box, p) {
  const key = `${p.state}/${p.nice}`;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren();
  if (p.state === "ZOMBIE") {
    box.textContent = p.exit_code === null ? "" : `exit ${p.exit_code}`;
    return;
  }
  const button = (label, action, fn, cls) => {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.action = action;
    if (cls) b.className = cls;
    b.addEventListener("click", fn);
    box.appendChild(b);
    return b;
  };
  if (p.state === "STOPPED") button("cont", "cont", () => act(p.pid, "proc.signal", { pid: p.pid, signal: "cont" }));
  else button("stop", "stop", () => act(p.pid, "proc.signal", { pid: p.pid, signal: "stop" }));
  const kill = button("kill", "kill", () => {
    if (!kill.classList.contains("armed")) {
      kill.classList.add("armed");
      kill.textContent = "kill?";
      setTimeout(() => { kill.classList.remove("armed"); kill.textContent = "kill"; }, 3000);
      return;
    }
    act(p.pid, "proc.kill", { pid: p.pid });
  }, "danger");
  const nice = document.createElement("input");
  nice.type = "number"; nice.min = -20; nice.max = 19; nice.value = p.nice; nice.title = "nice";
  nice.dataset.action = "nice";
  nice.addEventListener("change", () => act(p.pid, "proc.nice", { pid: p.pid, nice: Number(nice.value) }));
  box.appendChild(nice);
}

async function act(pid, name, args) {
  const where = state.procPid === null ? $("procs-error") : $("proc-error");
  try {
    await syscall(name, args);
    where.textContent = "";
  } catch (e) {
    where.textContent = `${name} ${pid}: ${e.errno}: ${e.message}`;
  }
}

// -- charts (SVG, drawn in pixels of the element so text is never stretched) --------------------------

function chartFrame(svg) {
  const w = Math.max(svg.clientWidth, 100), h = Math.max(svg.clientHeight, 60);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  const now = Date.now() / 1000;
  const pad = { l: 34, r: 6, t: 6, b: 14 };
  return { w, h, pad, x: (t) => pad.l + (w - pad.l - pad.r) * (1 - (now - t) / WINDOW_S),
           y: (v, max) => h - pad.b - (h - pad.t - pad.b) * (max ? v / max : 0) };
}

function svgEl(name, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function axes(svg, f, max, label) {
  for (const frac of [0, 0.5, 1]) {
    const y = f.y(max * frac, max);
    svgEl("line", { x1: f.pad.l, x2: f.w - f.pad.r, y1: y, y2: y, class: "grid" }, svg);
    const t = svgEl("text", { x: f.pad.l - 4, y: y + 3, "text-anchor": "end", class: "axis" }, svg);
    t.textContent = label(max * frac);
  }
  const t = svgEl("text", { x: f.w - f.pad.r, y: f.h - 2, "text-anchor": "end", class: "axis" }, svg);
  t.textContent = `last ${WINDOW_S} s`;
}

function lineChart(svg, series, fmt) {
  const f = chartFrame(svg);
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  axes(svg, f, max, fmt);
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map(([t, v], i) => `${i ? "L" : "M"}${f.x(t).toFixed(1)},${f.y(v, max).toFixed(1)}`).join("");
    svgEl("path", { d, class: "line", stroke: s.color }, svg);
  }
}

function colorOf(pid) { return PALETTE[pid % PALETTE.length]; }

function shareChart(svg) {
  const f = chartFrame(svg);
  axes(svg, f, 1, (v) => `${Math.round(v * 100)}%`);
  const samples = state.samples;
  const pids = [...new Set(samples.flatMap((s) => Object.keys(s.share || {}).map(Number)))].sort((a, b) => a - b);
  const names = new Map((state.snapshot ? state.snapshot.procs : []).map((p) => [p.pid, p.name]));
  const base = samples.map(() => 0);
  const legend = $("share-legend");
  legend.replaceChildren();
  for (const pid of pids) {
    const top = samples.map((s, i) => base[i] + ((s.share || {})[pid] || 0));
    const upper = samples.map((s, i) => `${f.x(s.time).toFixed(1)},${f.y(top[i], 1).toFixed(1)}`);
    const lower = samples.map((s, i) => `${f.x(s.time).toFixed(1)},${f.y(base[i], 1).toFixed(1)}`).reverse();
    svgEl("polygon", { points: [...upper, ...lower].join(" "), fill: colorOf(pid), "fill-opacity": 0.75 }, svg);
    top.forEach((v, i) => { base[i] = v; });
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colorOf(pid);
    item.append(swatch, `${pid} ${names.get(pid) || ""}`);
    legend.appendChild(item);
  }
}

function renderCharts() {
  if ($("overview").hidden) return;
  const pts = (key) => state.samples.map((s) => [s.time, s[key]]);
  lineChart($("chart-rate"), [{ color: "#2563eb", points: pts("tok_s") }], (v) => v.toFixed(v < 10 ? 1 : 0));
  lineChart($("chart-batch"), [{ color: "#16a34a", points: pts("running") }, { color: "#ca8a04", points: pts("waiting") }],
    (v) => v.toFixed(v < 10 && v % 1 ? 1 : 0));
  shareChart($("chart-share"));
}

// -- one process's page --------------------------------------------------------------------------------

function openProcess(pid) {
  state.procPid = pid;
  show("process");
  $("proc-title").textContent = `pid ${pid}`;
  $("proc-actions").replaceChildren();
  $("proc-log").textContent = "";
  $("proc-error").textContent = "";
  clearInterval(state.procTimer);
  refreshProcess();
  state.procTimer = setInterval(refreshProcess, PROC_REFRESH_MS);
}

function closeProcess() {
  clearInterval(state.procTimer);
  state.procPid = null;
}

function renderProcFacts() {
  const pid = state.procPid;
  const procs = state.snapshot ? state.snapshot.procs : [];
  const p = procs.find((q) => q.pid === pid);
  if (!p) return;
  $("proc-title").textContent = `pid ${pid} · ${p.name}`;
  setActions($("proc-actions"), p);
  const facts = {
    state: p.state + (p.wchan ? ` (waiting on ${p.wchan})` : ""), program: p.program, parent: p.ppid,
    nice: p.nice, "prompt tokens": p.prompt_tokens, "generated tokens": p.generated_tokens,
    "tok/s": (p.tok_s || 0).toFixed(1), "time in the model": `${p.llm_time.toFixed(1)} s`, syscalls: p.syscalls,
    "KV cache": `${mb(p.kv_bytes)} MB`, age: fmtAge(p.age),
  };
  if (p.exit_code !== null) facts.exit = `${p.exit_code}: ${p.exit_reason}`;
  const dl = $("proc-facts");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(facts)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  const kids = $("proc-children");
  kids.replaceChildren();
  for (const c of procs.filter((q) => q.ppid === pid)) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `#/proc/${c.pid}`;
    a.textContent = `${c.pid} ${c.name}`;
    li.append(a, ` ${c.state}`);
    kids.appendChild(li);
  }
  if (!kids.children.length) kids.textContent = "none";
}

async function refreshProcess() {
  const pid = state.procPid;
  if (pid === null) return;
  renderProcFacts();
  const errors = [];
  await Promise.all([
    syscall("log.read", { pid, tail: 200 }).then((r) => {
      const pre = $("proc-log");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = r.lines.join("\n") || "(empty)";
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }).catch((e) => errors.push(`log: ${e.errno}: ${e.message}`)),
    syscall("mem.stat", { pid, pages: true }).then(renderMemory)
      .catch((e) => { if (e.errno !== "ESRCH") errors.push(`memory: ${e.errno}: ${e.message}`); }),
    request(`/api/procs/${pid}/quota`).then(readJson).then(renderQuota)
      .catch((e) => errors.push(`quota: ${e.errno}: ${e.message}`)),
  ]);
  if (pid === state.procPid) $("proc-error").textContent = errors.join(" · ");
}

function renderMemory(m) {
  $("mem-summary").textContent = m.memory
    ? `${m.memory} (${m.named ? "named" : "anonymous"}, ${m.policy}) · ${m.resident_tokens}/${m.budget} tokens resident · ` +
      `${m.pages} pages: ${m.resident_pages} resident, ${m.evicted_pages} evicted, ${m.pinned_pages} pinned · ` +
      `${m.faults} faults, ${m.page_ins} in, ${m.page_outs} out`
    : "no memory pages";
  const bar = $("mem-bar");
  bar.replaceChildren();
  const body = $("mem-pages").tBodies[0];
  body.replaceChildren();
  for (const e of m.entries) {
    const cell = document.createElement("span");
    cell.className = e.pinned ? "pinned" : e.recalled ? "recalled" : e.state;
    cell.title = `page ${e.page}: ${e.state}${e.pinned ? ", pinned" : ""}${e.recalled ? ", recalled" : ""}`;
    bar.appendChild(cell);
    const tr = document.createElement("tr");
    const flags = [e.pinned && "pinned", e.recalled && "recalled"].filter(Boolean).join(" ");
    for (const [v, num] of [[e.page, 1], [e.position, 1], [e.message, 1], [e.role], [e.tokens, 1], [e.state], [flags],
      [e.accesses, 1], [e.preview]]) {
      const td = document.createElement("td");
      td.textContent = v;
      if (num) td.className = "num";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderQuota(q) {
  const box = $("proc-quota");
  box.replaceChildren();
  const rows = [["tokens", "max_tokens", "tokens"], ["wall time", "max_wall_time", "wall_time"],
    ["syscalls", "max_syscalls", "syscalls"], ["memory pages", "max_memory_pages", "memory_pages"]];
  for (const [label, limitKey, usedKey] of rows) {
    const limit = q.quota[limitKey], used = q.used[usedKey];
    const line = document.createElement("div");
    const shown = typeof used === "number" && used % 1 ? used.toFixed(1) : used;
    line.textContent = `${label}: ${shown}${limit == null ? " (no limit)" : ` of ${limit}`}`;
    box.appendChild(line);
    const meter = document.createElement("div");
    meter.className = "meter";
    const fill = document.createElement("div");
    const frac = limit ? Math.min(used / limit, 1) : 0;
    fill.style.width = `${(frac * 100).toFixed(1)}%`;
    if (frac >= 0.9) meter.classList.add("over");
    meter.appendChild(fill);
    box.appendChild(meter);
  }
}

// -- spawning --------------------------------------------------------------------------------------------

// Arguments as a shell would split them: words, "double" or 'single' quoted phrases.
function splitArgs(text) {
  const out = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(text))) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

async function spawn(event) {
  event.preventDefault();
  const program = $("spawn-program").value.trim();
  const args = splitArgs($("spawn-args").value);
  const nice = Number($("spawn-nice").value || 0);
  try {
    const r = await syscall("proc.spawn", { program, args, nice });
    $("spawn-result").textContent = `started pid ${r.pid}`;
    $("procs-error").textContent = "";
  } catch (e) {
    $("spawn-result").textContent = "";
    $("procs-error").textContent = `spawn: ${e.errno}: ${e.message}`;
  }
}

// -- helpers and start-up --------------------------------------------------------------------------------

function mb(bytes) { return (bytes / 2 ** 20).toFixed(1); }

function fmtAge(s) {
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function route() {
  if (!state.token) return show("login");
  const m = location.hash.match(/^#\/proc\/(\d+)$/);
  if (m) return openProcess(Number(m[1]));
  closeProcess();
  show("overview");
  render();
}

function start(token) {
  state.token = token;
  route();
  followLive();
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => renderCharts());
document.addEventListener("DOMContentLoaded", () => {
  $("spawn-form").addEventListener("submit", spawn);
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("login-token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-token").value = "";
    start(token);
  });
  const token = takeToken();
  if (token) start(token); else show("login");
});
