// The orch dashboard: plain JavaScript, no build step. It signs in with a browser session
// (an HttpOnly cookie set by POST /auth/login with "cookie": true), sends the CSRF token the
// server derives from it on every state-changing call, and follows the event log over
// server-sent events. Everything is built with DOM calls (no HTML from data), and an action is
// only offered to a role the API allows it for.

const KINDS = [
  "task.queued", "task.started", "task.succeeded", "task.failed", "task.retrying",
  "task.timed_out", "task.cancelled", "task.rescued", "task.requeued", "task.waiting",
  "task.released", "task.reopened", "task.deleted", "workflow.succeeded", "workflow.failed",
  "engine.paused", "engine.resumed", "engine.concurrency_changed", "engine.quarantined",
  "engine.probe_failed", "engine.released", "engine.upgraded", "engine.rolled_back",
  "engine.claim_loop_restarted", "engine.claim_loop_stopped", "lock.released",
  "plugin.restarted", "node.not_ready", "node.ready", "rescue.reported", "alert.fired",
  "alert.resolved",
];
// The states a task list filters by: the stored ones, with `queued` split as the overview
// counts it, due now or delayed (a delay, a later run time, a retry's backoff).
const STATES = ["waiting", "queued", "delayed", "running", "succeeded", "failed", "timed_out", "cancelled"];
const stateQuery = (state) => (state === "queued" ? { status: "queued", due: "true" } : state === "delayed" ? { status: "queued", due: "false" } : { status: state });
const FINISHED = new Set(["succeeded", "failed", "timed_out", "cancelled"]);
const RETRYABLE = new Set(["failed", "timed_out", "cancelled"]);
const UUID = /^(task-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PAGE = 50;
const LIVE_KEEP = 500;

const session = { me: null, stream: null, lastSeq: null, live: [], listeners: new Set() };

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return appendAll(el, children);
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replaces `el`'s children (arrays flattened, nothing for null or false). A re-render keeps
// the keyboard where it was: the element with the same `data-key` gets the focus back.
function fill(el, ...children) {
  const focused = el.contains(document.activeElement) ? document.activeElement?.dataset?.key : null;
  el.replaceChildren();
  appendAll(el, children);
  if (focused) el.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
  return el;
}

// Whether the user is typing in `el`: a refresh would wipe what they typed.
const typingIn = (el) => el.contains(document.activeElement) && /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);

const svg = (tag, attrs) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return el;
};

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function ago(iso) {
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (!Number.isFinite(seconds)) return "";
  const abs = Math.abs(seconds);
  const text = abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)}m` : `${Math.round(abs / 3600)}h`;
  return seconds >= 0 ? `${text} ago` : `in ${text}`;
}

const badge = (state) => h("span", { class: `badge ${state}` }, state.replace("_", " "));
// Ids are time-ordered: their first digits are the time they were made, the same for tasks of one
// moment. The last digits are random, so they tell tasks apart.
const shortId = (id) => `…${id.replace(/^task-/, "").slice(-12)}`;
const taskLink = (id, key = `task:${id}`) => h("a", { href: `#/tasks/${id}`, class: "mono", title: id, "data-key": key }, shortId(id));

function toast(message, bad) {
  const box = document.getElementById("toast");
  const item = h("div", { class: bad ? "bad" : "", role: bad ? "alert" : null }, message);
  box.append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 4000);
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

const csrf = () => cookie("__Host-orch_csrf") || cookie("orch_csrf");

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") {
    const token = csrf();
    if (token) headers["X-CSRF-Token"] = token;
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!response.ok) {
    if (response.status === 401 && session.me) signedOut();
    const message = data && (data.error || data.message) ? (data.error || data.message) : response.statusText;
    throw new ApiError(response.status, `${message} (${response.status})`);
  }
  return data;
}

const can = {
  operate: () => ["admin", "operator"].includes(session.me?.role),
  dispatch: () => ["admin", "operator", "system"].includes(session.me?.role),
  admin: () => session.me?.role === "admin",
};

async function act(label, run) {
  try {
    const result = await run();
    toast(label);
    return result;
  } catch (error) {
    toast(error.message, true);
    return undefined;
  }
}

// ---- session and live stream ---------------------------------------------------------------

function signedOut(why) {
  session.me = null;
  if (session.stream) session.stream.close();
  session.stream = null;
  session.live = [];
  session.lastSeq = null;
  clearTimeout(session.reconnect);
  setLive(false, "Signed out");
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  if (why) toast(why, true);
  route();
}

function setLive(on, text) {
  const live = document.getElementById("live");
  live.classList.toggle("on", on);
  live.title = text;
  live.setAttribute("aria-label", text);
}

// The live stream. The browser reconnects by itself after a network error (sending the last
// event's id, so once one event has arrived nothing is missed); an answer other than 200 (an
// expired session, too many streams, a server shutting down) closes it for good, and then the
// page asks who it is: signed out, or it reopens the stream after the last event it saw, a
// little later each time.
function startStream(delay = 1000) {
  if (session.stream) session.stream.close();
  const from = session.lastSeq === null ? "" : `?last_event_id=${session.lastSeq}`;
  const stream = new EventSource(`/sse/events${from}`);
  stream.onopen = () => {
    delay = 1000;
    setLive(true, "Live: updates arrive as they happen");
  };
  stream.onerror = () => {
    setLive(false, "Live updates interrupted: reconnecting");
    if (stream.readyState !== EventSource.CLOSED || session.stream !== stream) return;
    // Still this stream's turn (not signed out, not replaced meanwhile)?
    const stillOurs = () => session.me && session.stream === stream;
    const next = Math.min(delay * 2, 30000);
    const jitter = () => delay * (0.75 + Math.random() / 2);
    session.reconnect = setTimeout(async () => {
      if (!stillOurs()) return;
      try {
        await api("GET", "/auth/me");
        if (stillOurs()) startStream(next);
      } catch (error) {
        // A 401 has signed the page out already (`api`); say why.
        if (error.status === 401) toast("Your session ended: sign in again.", true);
        else if (stillOurs()) session.reconnect = setTimeout(() => stillOurs() && startStream(next), jitter());
      }
    }, jitter());
  };
  const receive = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    session.lastSeq = event.seq ?? session.lastSeq;
    session.live.unshift(event);
    if (session.live.length > LIVE_KEEP) session.live.length = LIVE_KEEP;
    for (const listener of session.listeners) listener(event);
  };
  stream.onmessage = receive;
  for (const kind of KINDS) stream.addEventListener(kind, receive);
  session.stream = stream;
}

function signedIn(me) {
  session.me = me;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("whoami").textContent = `${me.username} (${me.role})`;
  for (const link of document.querySelectorAll("[data-role=admin]")) link.hidden = me.role !== "admin";
  startStream();
}

// What a view registers (live listeners, timers) ends with it; a view that finishes loading
// after the user moved on registers nothing.
class Scope {
  constructor() {
    this.alive = true;
    this.cleanups = [];
  }
  end() {
    this.alive = false;
    for (const cleanup of this.cleanups.splice(0)) cleanup();
  }
  live(listener) {
    if (!this.alive) return;
    session.listeners.add(listener);
    this.cleanups.push(() => session.listeners.delete(listener));
  }
  every(fn, ms) {
    if (!this.alive) return;
    const timer = setInterval(fn, ms);
    this.cleanups.push(() => clearInterval(timer));
  }
  after(fn, ms) {
    if (!this.alive) return;
    const timer = setTimeout(fn, Math.min(ms, 2 ** 31 - 1));
    this.cleanups.push(() => clearTimeout(timer));
  }
  // `fn` at most once per `ms`, the first call `ms` after the first request; nothing once
  // the view has ended.
  debounce(fn, ms) {
    let timer = null;
    this.cleanups.push(() => clearTimeout(timer));
    return () => {
      if (timer || !this.alive) return;
      timer = setTimeout(() => {
        timer = null;
        if (this.alive) fn();
      }, ms);
    };
  }
  // One pending call of `fn` under `key`: a new one replaces it.
  once(key, fn, ms) {
    if (!this.alive) return;
    this.timers ??= new Map();
    clearTimeout(this.timers.get(key));
    this.timers.set(key, setTimeout(fn, Math.min(ms, 2 ** 31 - 1)));
    if (this.timers.size === 1 && !this.clearsTimers) {
      this.clearsTimers = true;
      this.cleanups.push(() => this.timers.forEach((timer) => clearTimeout(timer)));
    }
  }
}


// ---- views ---------------------------------------------------------------------------------

function loginView(main) {
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", {
    async onsubmit(e) {
      e.preventDefault();
      error.textContent = "";
      const data = new FormData(form);
      try {
        await api("POST", "/auth/login", {
          username: data.get("username"),
          password: data.get("password"),
          cookie: true,
        });
        signedIn(await api("GET", "/auth/me"));
        route();
      } catch (err) {
        error.textContent = err.status === 401 ? "Wrong username or password." : err.message;
      }
    },
  },
    h("label", {}, "Username", h("input", { name: "username", autocomplete: "username", required: true, autofocus: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  main.append(h("section", { class: "login panel" }, h("h1", {}, "Sign in to orch"), form));
}

function barChart(points, series, label) {
  const width = 600;
  const height = 130;
  const max = Math.max(1, ...points.map((p) => series.reduce((sum, s) => sum + s.value(p), 0)));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 14}`, role: "img", "aria-label": label, preserveAspectRatio: "none" });
  const step = width / points.length;
  points.forEach((point, i) => {
    let y = height;
    for (const s of series) {
      const value = s.value(point);
      if (!value) continue;
      const bar = (value / max) * (height - 4);
      y -= bar;
      const rect = svg("rect", { x: i * step + 1, y, width: Math.max(1, step - 2), height: bar, fill: s.color });
      rect.append(svg("title", {}));
      rect.lastChild.textContent = `${new Date(point.minute).toLocaleTimeString()}: ${value} ${s.name}`;
      chart.append(rect);
    }
  });
  chart.append(svg("line", { x1: 0, y1: height, x2: width, y2: height, stroke: "#d9dee6" }));
  const top = svg("text", { x: 2, y: 10, "font-size": 10, fill: "#5d6878" });
  top.textContent = String(max);
  chart.append(top);
  return h("div", { class: "chart" }, chart,
    h("div", { class: "legend" }, series.map((s) => h("span", {}, h("i", { style: null, "data-color": s.color }), s.name)), h("span", {}, "per minute, last hour")));
}

function colorLegends(root) {
  // Inline styles are refused by the page's policy; legend swatches get their colour here.
  for (const swatch of root.querySelectorAll("[data-color]")) swatch.style.background = swatch.dataset.color;
}

async function overviewView(main, scope) {
  main.append(h("h1", {}, "Overview"));
  const body = h("div", { "data-testid": "overview" });
  main.append(body);
  const render = async () => {
    const [stats, health] = await Promise.all([
      api("GET", "/stats"),
      // 503 when a check failed or the node shuts down: the report (and its alerts) is the
      // body then too.
      fetch("/health", { headers: { Accept: "application/json" } }).then((r) => r.json()).catch(() => null),
    ]);
    const t = stats.totals;
    const cards = h("div", { class: "cards", "data-testid": "totals" },
      STATES.map((state) => h("a", {
        class: "card", href: `#/tasks?status=${state}`,
      }, h("span", { class: "n", "data-state": state }, (t[state] ?? 0).toLocaleString()), h("span", { class: "l" }, state.replace("_", " ")))));
    const finished = stats.activity.map((m) => m.succeeded + m.failed + m.timed_out);
    const errors = stats.activity.map((m) => m.failed + m.timed_out);
    const lastHour = finished.reduce((a, b) => a + b, 0);
    const errorRate = lastHour ? (100 * errors.reduce((a, b) => a + b, 0)) / lastHour : 0;
    const throughput = barChart(stats.activity, [
      { name: "succeeded", color: "#1e7b45", value: (m) => m.succeeded },
      { name: "failed", color: "#b3261e", value: (m) => m.failed + m.timed_out },
      { name: "cancelled", color: "#8a5a00", value: (m) => m.cancelled },
    ], "Tasks finished per minute over the last hour");
    const rate = barChart(stats.activity.map((m) => ({ ...m, rate: m.succeeded + m.failed + m.timed_out ? Math.round((100 * (m.failed + m.timed_out)) / (m.succeeded + m.failed + m.timed_out)) : 0 })), [
      { name: "% failed", color: "#b3261e", value: (m) => m.rate },
    ], "Error rate per minute over the last hour");
    const alerts = health?.alerts ?? [];
    const engines = h("div", { class: "table-wrap" }, h("table", { "data-testid": "engine-counts" },
      h("thead", {}, h("tr", {}, h("th", {}, "Engine"), ["waiting", "queued", "delayed", "running", "succeeded", "failed", "timed_out", "cancelled"].map((s) => h("th", { class: "num" }, s.replace("_", " "))))),
      h("tbody", {}, stats.engines.map((e) => h("tr", {},
        h("td", {}, h("a", { href: `#/tasks?core_id=${encodeURIComponent(e.core_id)}` }, e.core_id)),
        ["waiting", "queued", "delayed", "running", "succeeded", "failed", "timed_out", "cancelled"].map((s) => h("td", { class: "num" }, e[s].toLocaleString())))))));
    fill(body, 
      cards,
      h("h2", {}, "Alerts"),
      alerts.length
        ? alerts.map((a) => h("div", { class: `alert ${a.severity}` }, h("strong", {}, a.rule), a.core_id ? ` (${a.core_id})` : "", ": ", a.summary))
        : h("p", { class: "muted" }, health ? `No alert firing. Node ${health.status}.` : "Health unavailable."),
      h("div", { class: "grid" },
        h("section", { class: "panel" }, h("h2", {}, `Throughput: ${lastHour.toLocaleString()} finished`), throughput),
        h("section", { class: "panel" }, h("h2", {}, `Error rate: ${errorRate.toFixed(1)} %`), rate)),
      h("h2", {}, "Tasks by engine"),
      engines,
      h("p", { class: "muted" }, `Outcomes counted from the event log since ${when(stats.activity_since)}.`),
    );
    colorLegends(body);
  };
  await render();
  const again = scope.debounce(() => render().catch(() => {}), 5000);
  scope.live((event) => { if (event.kind.startsWith("task.") || event.kind.startsWith("alert.")) again(); });
  scope.every(() => render().catch(() => {}), 15000);
}

function queryOf(hash) {
  const index = hash.indexOf("?");
  return new URLSearchParams(index < 0 ? "" : hash.slice(index + 1));
}

async function tasksView(main, params, scope) {
  const status = params.get("status") || "";
  const core = params.get("core_id") || "";
  const after = params.get("after") || "";
  const go = (changes) => {
    const next = new URLSearchParams({ status, core_id: core, ...changes });
    for (const [key, value] of [...next]) if (!value) next.delete(key);
    location.hash = `#/tasks${next.toString() ? `?${next}` : ""}`;
  };
  main.append(h("h1", {}, "Tasks"));
  const search = h("input", { name: "search", placeholder: "task id or idempotency key", "aria-label": "Find a task by id or idempotency key", size: 36 });
  const filters = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      const data = new FormData(filters);
      const wanted = String(data.get("search") || "").trim();
      if (wanted) {
        // An id, or a key (which may look like an id too).
        if (UUID.test(wanted)) {
          const task = await api("GET", `/jobs/${encodeURIComponent(wanted)}`).catch(() => null);
          if (task) {
            location.hash = `#/tasks/${task.task_id}`;
            return;
          }
        }
        const page = await api("GET", `/jobs?idempotency_key=${encodeURIComponent(wanted)}`).catch((err) => { toast(err.message, true); return null; });
        if (page?.jobs.length) location.hash = `#/tasks/${page.jobs[0].task_id}`;
        else if (page) toast(`No task has the id or idempotency key “${wanted}”.`, true);
        return;
      }
      go({ status: data.get("status"), core_id: String(data.get("core_id") || "").trim(), after: "" });
    },
  },
    h("label", {}, "State", h("select", { name: "status" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s, selected: s === status }, s.replace("_", " "))))),
    h("label", {}, "Engine", h("input", { name: "core_id", value: core, placeholder: "any" })),
    h("label", {}, "Find", search),
    h("button", { type: "submit" }, "Show"));
  main.append(filters);
  if (can.dispatch()) main.append(dispatchForm());
  if (can.operate() && status) main.append(bulkForm(status, core));
  const table = h("div", { class: "table-wrap" });
  const pager = h("div", { class: "row" });
  main.append(table, pager);
  const render = async () => {
    // Newest first: what an operator looks for is what just happened.
    const query = new URLSearchParams({ limit: PAGE, order: "newest" });
    if (status) for (const [key, value] of Object.entries(stateQuery(status))) query.set(key, value);
    if (core) query.set("core_id", core);
    if (after) query.set("after", after);
    const page = await api("GET", `/jobs?${query}`);
    fill(table, h("table", { "data-testid": "task-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Engine"), h("th", {}, "State"), h("th", { class: "num" }, "Priority"), h("th", { class: "num" }, "Attempt"), h("th", { class: "wide" }, "Created"), h("th", { class: "wide" }, "Updated"))),
      h("tbody", {}, page.jobs.length ? page.jobs.map((t) => h("tr", { "data-task": t.task_id },
        h("td", {}, taskLink(t.task_id)), h("td", {}, t.core_id), h("td", {}, badge(t.status === "queued" && new Date(t.estimated_start).getTime() > Date.now() ? "delayed" : t.status)),
        h("td", { class: "num" }, t.priority), h("td", { class: "num" }, `${t.attempt}/${t.max_attempts}`),
        h("td", { class: "wide" }, when(t.created_at)), h("td", { class: "wide" }, ago(t.updated_at))))
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No task matches.")))));
    fill(pager,
      after ? h("button", { class: "secondary", "data-key": "newest", onclick: () => go({ after: "" }) }, "Newest") : null,
      page.next_after ? h("button", { class: "secondary", "data-key": "older", onclick: () => go({ after: page.next_after }) }, "Older") : null,
      h("span", { class: "muted" }, "Newest first."));
  };
  await render();
  // Not while the user types in the filters: tried again a little later.
  const again = scope.debounce(() => {
    if (typingIn(main)) scope.once("refresh", again, 3000);
    else render().catch(() => {});
  }, 3000);
  scope.live((event) => { if (event.kind.startsWith("task.")) again(); });
}

function dispatchForm() {
  const form = h("form", {
    class: "row panel",
    "aria-label": "Dispatch a task",
    async onsubmit(e) {
      e.preventDefault();
      const data = new FormData(form);
      let payload;
      try {
        payload = JSON.parse(String(data.get("payload") || "{}"));
      } catch (err) {
        toast(`The payload is not JSON: ${err.message}`, true);
        return;
      }
      const body = { core_id: String(data.get("core_id")).trim(), payload };
      const priority = String(data.get("priority") || "").trim();
      if (priority) body.priority = Number(priority);
      const task = await act("Task dispatched", () => api("POST", "/dispatch", body));
      if (task) location.hash = `#/tasks/${task.task_id}`;
    },
  },
    h("label", {}, "Engine", h("input", { name: "core_id", required: true, placeholder: "echo" })),
    h("label", {}, "Priority", h("input", { name: "priority", type: "number", size: 5, placeholder: "1" })),
    h("label", { class: "grow" }, "Payload (JSON)", h("input", { name: "payload", value: "{}", size: 30, class: "mono" })),
    h("button", { type: "submit" }, "Dispatch"));
  return form;
}

function bulkForm(shown, core) {
  // A bulk action takes a stored state: due and delayed tasks are both `queued`.
  const status = stateQuery(shown).status;
  const actions = [];
  if (RETRYABLE.has(status)) actions.push("retry");
  if (!FINISHED.has(status)) actions.push("cancel");
  if (FINISHED.has(status)) actions.push("delete");
  const run = async (action) => {
    const filter = { action, status, ...(core ? { core_id: core } : {}) };
    const dry = await api("POST", "/jobs/bulk", { ...filter, dry_run: true }).catch((err) => { toast(err.message, true); return null; });
    if (!dry) return;
    if (!dry.matched) {
      toast(`No ${status} task to ${action}.`);
      return;
    }
    const more = dry.next_after ? " (the first batch; run it again for the rest)" : "";
    if (!confirm(`${action} ${dry.matched.toLocaleString()} ${status} task(s)${core ? ` of ${core}` : ""}${more}?`)) return;
    const done = await act(`${action}: done`, () => api("POST", "/jobs/bulk", filter));
    if (done) {
      const left = done.next_after ? "; more are left: run it again" : "";
      toast(`${done.changed} changed, ${done.refused.length} refused${left}`, done.refused.length > 0);
    }
  };
  return h("div", { class: "row", role: "group", "aria-label": "Bulk actions" },
    h("span", { class: "muted" }, `Every ${status === "queued" ? "queued task, due or delayed," : `${status.replace("_", " ")} task`}${core ? ` of ${core}` : ""}:`),
    actions.map((action) => h("button", { class: action === "delete" ? "danger" : "secondary", onclick: () => run(action) }, `${action[0].toUpperCase()}${action.slice(1)} all…`)));
}

function timelineOf(events) {
  return h("ol", { class: "timeline", "data-testid": "timeline" },
    events.map((e) => h("li", {}, h("strong", {}, e.kind), e.attempt ? ` (attempt ${e.attempt})` : "",
      h("div", { class: "when" }, when(e.at)),
      e.data && Object.keys(e.data).length ? h("code", {}, JSON.stringify(e.data)) : null)));
}

async function taskView(main, id, scope) {
  const body = h("div", { "data-testid": "task-detail" });
  main.append(h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")), body);
  const render = async () => {
    let task;
    try {
      task = await api("GET", `/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      // A deleted or pruned task's events may still be in the log.
      const past = err.status === 404 ? await api("GET", `/jobs/${encodeURIComponent(id)}/events`).catch(() => null) : null;
      fill(body, h("h1", {}, "Task ", h("span", { class: "mono" }, id)),
        h("p", { class: past ? "muted" : "error" }, err.status === 404 ? "No such task now: it was deleted or pruned, or never existed." : err.message),
        past?.events.length ? [h("h2", {}, "Its events in the log"), timelineOf(past.events)] : null);
      return;
    }
    const events = await api("GET", `/jobs/${encodeURIComponent(task.task_id)}/events`).catch(() => ({ events: [] }));
    const actions = [];
    const waitsFor = new Date(task.estimated_start).getTime() - Date.now();
    if (task.status === "queued" && waitsFor > 0) scope.once("due", () => render().catch(() => {}), waitsFor + 500);
    if (can.operate()) {
      // A workflow's tasks are retried with their workflow, and kept with it.
      const alone = !task.workflow_id;
      if (!FINISHED.has(task.status)) actions.push(h("button", { class: "secondary", "data-key": "cancel", onclick: () => act("Cancelled", () => api("POST", `/jobs/${task.task_id}/cancel`)).then(render) }, "Cancel"));
      if (task.status === "queued" && waitsFor > 1000) {
        actions.push(h("button", { class: "secondary", "data-key": "requeue", title: "It waits for its delay or a retry's backoff: make it due now", onclick: () => act("Requeued: due now", () => api("POST", `/jobs/${task.task_id}/requeue`)).then(render) }, "Requeue now"));
      }
      if (RETRYABLE.has(task.status) && alone) actions.push(h("button", { "data-key": "retry", onclick: () => act("Queued again", () => api("POST", `/jobs/${task.task_id}/retry`)).then(render) }, "Retry"));
      if (FINISHED.has(task.status) && alone) actions.push(h("button", { class: "danger", "data-key": "delete", onclick: async () => {
        if (!confirm("Delete this task and forget it?")) return;
        if (await act("Task deleted", () => api("DELETE", `/jobs/${task.task_id}`)) !== undefined) location.hash = "#/tasks";
      } }, "Delete"));
    }
    const field = (name, value) => [h("dt", {}, name), h("dd", {}, value ?? "—")];
    fill(body, 
      h("h1", {}, "Task ", h("span", { class: "mono" }, task.task_id), " ", h("span", { "data-testid": "task-status" }, badge(task.status))),
      actions.length ? h("div", { class: "actions" }, actions) : null,
      h("div", { class: "grid" },
        h("section", { class: "panel" }, h("h2", {}, "Fields"), h("dl", { class: "fields" },
          field("Engine", task.core_id), field("Priority", task.priority), field("Attempt", `${task.attempt} of ${task.max_attempts}`),
          field("Timeout", `${task.timeout} s`), field("Created", when(task.created_at)), field("Starts", when(task.estimated_start)),
          field("Started", when(task.started_at)), field("Finished", when(task.finished_at)),
          field("Idempotency key", task.idempotency_key), field("Locks", task.locks.join(", ") || null),
          field("Workflow", task.workflow_id ? h("a", { href: `#/workflows/${task.workflow_id}`, class: "mono", "data-key": "workflow" }, task.workflow_id) : null),
          task.waiting_for ? field("Waiting for", `${task.waiting_for} task(s)`) : null)),
        h("section", { class: "panel" }, h("h2", {}, "Timeline"), timelineOf(events.events))),
      h("h2", {}, "Payload"), h("pre", {}, JSON.stringify(task.payload, null, 2)),
      task.result !== null && task.result !== undefined ? [h("h2", {}, "Result"), h("pre", { "data-testid": "task-result" }, JSON.stringify(task.result, null, 2))] : null,
      task.error ? [h("h2", {}, "Error"), h("pre", { class: "error", "data-testid": "task-error" }, task.error)] : null,
      Object.keys(task.metadata || {}).length ? [h("h2", {}, "Metadata"), h("pre", {}, JSON.stringify(task.metadata, null, 2))] : null,
    );
  };
  await render();
  const again = scope.debounce(() => render().catch(() => {}), 200);
  const plain = id.replace(/^task-/, "").toLowerCase();
  scope.live((event) => { if (event.task_id && String(event.task_id).replace(/^task-/, "").toLowerCase() === plain) again(); });
}

// ---- a workflow ----------------------------------------------------------------------------

/** Most tasks of a workflow the page draws (pages of the API's 1,000). */
const WORKFLOW_SHOWN = 3000;
const plainId = (id) => String(id).replace(/^task-/, "").toLowerCase();

/** The workflow's tasks by level: a task one below the deepest of its parents shown. */
function levelsOf(tasks) {
  const level = new Map();
  const levels = [];
  for (const t of tasks) {
    // Topological order: every parent shown comes first.
    const depth = t.depends_on.reduce((d, p) => Math.max(d, (level.get(plainId(p.task)) ?? -1) + 1), 0);
    level.set(plainId(t.task.task_id), depth);
    (levels[depth] ||= []).push(t);
  }
  return levels;
}

async function workflowView(main, id, scope) {
  const body = h("div", { "data-testid": "workflow-detail" });
  main.append(h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")), body);
  const ours = new Set();
  const render = async () => {
    let detail;
    const tasks = [];
    let offset = 0;
    do {
      detail = await api("GET", `/workflows/${encodeURIComponent(id)}?limit=1000&offset=${offset}`);
      tasks.push(...detail.tasks);
      offset = detail.next_offset;
    } while (offset !== null && offset !== undefined && tasks.length < WORKFLOW_SHOWN);
    const wf = detail.workflow;
    ours.clear();
    for (const t of tasks) ours.add(plainId(t.task.task_id));
    const steps = new Map(tasks.map((t) => [plainId(t.task.task_id), t.step]));
    const actions = [];
    if (can.operate()) {
      if (wf.status === "running") actions.push(h("button", { class: "secondary", "data-key": "cancel-workflow", onclick: () => act("Cancelled what had not run", () => api("POST", `/workflows/${wf.workflow_id}/cancel`)).then(render) }, "Cancel what has not run"));
      if (wf.status === "failed" || wf.status === "partly") actions.push(h("button", { "data-key": "retry-workflow", onclick: () => act("Retrying the failed part", () => api("POST", `/workflows/${wf.workflow_id}/retry`)).then(render) }, "Retry the failed part"));
    }
    const chip = (t) => {
      const parents = t.depends_on.map((p) => {
        const step = steps.get(plainId(p.task));
        return `${step === undefined ? p.task : `step ${step}`}${p.on_failure === "fail" ? "" : ` (${p.on_failure.replace("_", " ")})`}`;
      });
      return h("a", { href: `#/tasks/${t.task.task_id}`, class: `chip ${t.task.status}`, "data-step": t.step, "data-status": t.task.status,
        title: `${t.task.core_id}: ${t.task.status}${parents.length ? `; after ${parents.join(", ")}` : ""}` },
        h("span", { class: "mono" }, `step ${t.step}`), " ", t.task.core_id);
    };
    const field = (name, value) => [h("dt", {}, name), h("dd", {}, value ?? "—")];
    fill(body,
      h("h1", {}, "Workflow ", h("span", { class: "mono" }, wf.workflow_id), " ", h("span", { "data-testid": "workflow-status" }, badge(wf.status))),
      actions.length ? h("div", { class: "actions" }, actions) : null,
      h("dl", { class: "fields panel" },
        field("Tasks", wf.task_count), field("Succeeded", wf.succeeded), field("Not finished", wf.unfinished),
        field("Dispatched", when(wf.created_at)), field("Finished", when(wf.finished_at)), field("Idempotency key", wf.idempotency_key)),
      h("h2", {}, "Graph"),
      h("p", { class: "muted" }, "Each row holds the tasks one step below the deepest task they wait for; hover a task for what it waits for.",
        tasks.length < wf.task_count ? ` The first ${tasks.length} of ${wf.task_count} tasks.` : ""),
      h("div", { class: "graph", "data-testid": "workflow-graph" },
        levelsOf(tasks).map((row, i) => h("div", { class: "level", "data-level": i }, h("span", { class: "muted" }, `${i}`), row.map(chip)))));
  };
  await render();
  const again = scope.debounce(() => render().catch(() => {}), 300);
  scope.live((event) => {
    if ((event.task_id && ours.has(plainId(event.task_id))) || (event.data && event.data.workflow_id === id)) again();
  });
}

function eventsView(main, scope) {
  let paused = false;
  const list = h("tbody");
  const filter = h("input", { placeholder: "kind, engine or task id", "aria-label": "Filter events" });
  const toggle = h("button", { class: "secondary", "aria-pressed": "false", onclick: () => {
    paused = !paused;
    toggle.textContent = paused ? "Resume" : "Pause";
    toggle.setAttribute("aria-pressed", String(paused));
    if (!paused) render();
  } }, "Pause");
  const row = (e) => h("tr", {}, h("td", { class: "num mono" }, e.seq), h("td", {}, when(e.at)), h("td", {}, e.kind),
    h("td", {}, e.task_id ? taskLink(e.task_id, `event:${e.seq}`) : "—"), h("td", {}, e.core_id ?? "—"),
    h("td", { class: "wide mono" }, e.data && Object.keys(e.data).length ? JSON.stringify(e.data).slice(0, 160) : ""));
  const matches = (e) => {
    const text = filter.value.trim().toLowerCase();
    return !text || [e.kind, e.core_id, e.task_id].some((v) => v && String(v).toLowerCase().includes(text));
  };
  const render = () => fill(list, ...session.live.filter(matches).slice(0, 200).map(row));
  filter.addEventListener("input", render);
  main.append(h("h1", {}, "Live events"),
    h("div", { class: "row" }, filter, toggle, h("span", { class: "muted" }, `Newest first, the last ${LIVE_KEEP} since the page opened; after a lost connection the stream goes on from the last event it had.`)),
    h("div", { class: "table-wrap" }, h("table", { class: "events", "data-testid": "event-list" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "At"), h("th", {}, "Kind"), h("th", {}, "Task"), h("th", {}, "Engine"), h("th", { class: "wide" }, "Data"))),
      list)));
  render();
  // At most four times a second, however fast events come.
  const again = scope.debounce(() => { if (!paused) render(); }, 250);
  scope.live(again);
}

async function enginesView(main, scope) {
  const body = h("div");
  main.append(h("h1", {}, "Engines"), body);
  const render = async () => {
    const list = await api("GET", "/engines");
    fill(body, h("p", { class: "muted" }, `Concurrency and in-flight counts are node ${list.node}'s; a pause holds on every node.`),
      h("div", { class: "table-wrap" }, h("table", { "data-testid": "engine-list" },
        h("thead", {}, h("tr", {}, h("th", {}, "Engine"), h("th", {}, "State"), h("th", { class: "num" }, "In flight"), h("th", { class: "num" }, "Concurrency"), h("th", { class: "wide" }, "Version"), h("th", {}, "Health"), can.operate() ? h("th", {}, "Actions") : null)),
        h("tbody", {}, list.engines.map((e) => engineRow(e, render))))));
  };
  await render();
  const refresh = () => { if (!typingIn(main)) render().catch(() => {}); };
  const again = scope.debounce(refresh, 500);
  scope.live((event) => { if (event.kind.startsWith("engine.") || event.kind.startsWith("node.")) again(); });
  scope.every(refresh, 10000);
}

function engineRow(e, render) {
  const name = encodeURIComponent(e.engine);
  const health = e.quarantine
    ? h("span", { title: e.quarantine.last_error || "" }, badge("quarantined"), ` since ${ago(e.quarantine.since)}`)
    : ({
      running: badge("ok"), paused: badge("ok"), probing: badge("probing"),
      node_not_ready: h("span", { class: "badge critical" }, "node not ready"),
      stopped: h("span", { class: "badge critical", title: "its claim loop stopped" }, "stopped"),
      not_registered: h("span", { class: "muted" }, "not served here"),
    })[e.status] ?? badge(e.status);
  const actions = [];
  if (can.operate()) {
    if (e.pause) actions.push(h("button", { "data-key": `resume:${e.engine}`, "aria-label": `Resume ${e.engine}`, onclick: () => act(`${e.engine} resumed`, () => api("POST", `/engines/${name}/resume`)).then(render) }, "Resume"));
    else actions.push(h("button", { class: "secondary", "data-key": `pause:${e.engine}`, "aria-label": `Pause ${e.engine}`, onclick: () => {
      const reason = prompt(`Pause ${e.engine}: its tasks wait, running ones finish. Reason?`, "paused from the dashboard");
      if (reason !== null) act(`${e.engine} paused`, () => api("POST", `/engines/${name}/pause?reason=${encodeURIComponent(reason)}`)).then(render);
    } }, "Pause"));
    if (e.limit) {
      const input = h("input", { type: "number", min: 1, value: e.limit, size: 4, "aria-label": `Concurrency of ${e.engine}` });
      actions.push(h("form", { class: "actions", onsubmit: (ev) => {
        ev.preventDefault();
        act(`${e.engine}: concurrency ${input.value}`, () => api("PUT", `/engines/${name}/concurrency`, { limit: Number(input.value) })).then(render);
      } }, input, h("button", { class: "secondary", type: "submit", "aria-label": `Set the concurrency of ${e.engine}` }, "Set")));
      if (e.limit_pinned) actions.push(h("button", { class: "link", "aria-label": `Unpin the concurrency of ${e.engine}`, onclick: () => act(`${e.engine}: concurrency back to ${e.registered_limit}`, () => api("DELETE", `/engines/${name}/concurrency`)).then(render) }, "Unpin"));
    }
  }
  return h("tr", { "data-engine": e.engine },
    h("td", {}, h("a", { href: `#/tasks?core_id=${name}` }, e.engine)),
    h("td", {}, badge(e.status === "running" ? "running-engine" : e.status), e.pause ? h("div", { class: "muted" }, `by ${e.pause.actor}: ${e.pause.reason}`) : null),
    h("td", { class: "num" }, e.in_flight), h("td", { class: "num" }, e.limit, e.limit_pinned ? " (set at run time)" : ""),
    h("td", { class: "wide" }, e.version ?? "—"), h("td", {}, health),
    can.operate() ? h("td", {}, h("div", { class: "actions" }, actions)) : null);
}

async function locksView(main, scope) {
  const body = h("div");
  main.append(h("h1", {}, "Locks"), body);
  const render = async () => {
    const locks = await api("GET", "/locks");
    fill(body, h("div", { class: "table-wrap" }, h("table", { "data-testid": "lock-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "Resource"), h("th", {}, "Holder"), h("th", { class: "num" }, "Fencing token"), h("th", {}, "Expires"), h("th", {}, "Waiters"), can.admin() ? h("th", {}, "Actions") : null)),
      h("tbody", {}, locks.length ? locks.map((l) => h("tr", {},
        h("td", { class: "mono" }, l.resource), h("td", {}, l.owner), h("td", { class: "num" }, l.fencing_token),
        h("td", { title: when(l.expires_at) }, ago(l.expires_at)),
        h("td", {}, l.waiters?.length ? h("ol", {}, l.waiters.map((w) => h("li", {}, `${w.owner} (priority ${w.priority}, waiting ${ago(w.enqueued_at).replace(" ago", "")})`))) : "none"),
        can.admin() ? h("td", {}, h("button", { class: "danger", "data-key": `release:${l.resource}`, "aria-label": `Release ${l.resource}`, onclick: () => {
          if (confirm(`Force ${l.owner}'s lock on ${l.resource} free? Its holder's fencing token stops being the newest.`)) act("Lock released", () => api("DELETE", `/locks/${encodeURIComponent(l.resource)}`)).then(render);
        } }, "Release")) : null))
        : h("tr", {}, h("td", { colspan: can.admin() ? 6 : 5, class: "muted" }, "No lock is held."))))));
  };
  await render();
  scope.live((event) => { if (event.kind.startsWith("lock.")) render().catch(() => {}); });
  scope.every(() => render().catch(() => {}), 5000);
}

async function pluginsView(main) {
  const data = await api("GET", "/plugins");
  main.append(h("h1", {}, "Plugins"),
    h("div", { class: "table-wrap" }, h("table", { "data-testid": "plugin-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "Plugin"), h("th", {}, "Version"), h("th", {}, "Description"), h("th", {}, "Serves"))),
      h("tbody", {}, data.plugins.length ? data.plugins.map((p) => h("tr", {}, h("td", {}, p.name), h("td", { class: "mono" }, p.version), h("td", {}, p.description),
        h("td", {}, p.capabilities.map((c) => (c.detail ? `${c.name}: ${c.detail}` : c.name)).join(", "))))
        : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No plugin loaded."))))),
    h("h2", {}, "Engines served by this node"), h("p", {}, data.engines.join(", ") || "none"));
}

async function usersView(main) {
  main.append(h("h1", {}, "Users"));
  if (!can.admin()) {
    main.append(h("p", {}, "Only an admin manages users."));
    return;
  }
  const body = h("div");
  const form = h("form", {
    class: "row panel",
    async onsubmit(e) {
      e.preventDefault();
      const data = new FormData(form);
      const made = await act("User created", () => api("POST", "/users", { username: data.get("username"), password: data.get("password"), role: data.get("role") }));
      if (made !== undefined) {
        form.reset();
        render();
      }
    },
  },
    h("label", {}, "Username", h("input", { name: "username", required: true, autocomplete: "off" })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
    h("label", {}, "Role", h("select", { name: "role" }, ["viewer", "operator", "system", "admin"].map((r) => h("option", { value: r }, r)))),
    h("button", { type: "submit" }, "Add user"));
  main.append(form, body);
  const render = async () => {
    const users = await api("GET", "/users");
    const list = Array.isArray(users) ? users : users.users;
    fill(body, h("div", { class: "table-wrap" }, h("table", { "data-testid": "user-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", {}, "Role"), h("th", {}, "State"), h("th", {}, "Actions"))),
      h("tbody", {}, list.map((u) => {
        const name = encodeURIComponent(u.username);
        return h("tr", {}, h("td", {}, u.username), h("td", {}, u.role),
          h("td", {}, u.disabled ? h("span", { class: "badge cancelled" }, "disabled") : u.locked_until ? h("span", { class: "badge warning" }, "locked out") : "active"),
          h("td", {}, u.username === session.me.username ? h("span", { class: "muted" }, "you") : h("div", { class: "actions" },
            h("select", { "aria-label": `Role of ${u.username}`, onchange: (e) => act(`${u.username} is now ${e.target.value}`, () => api("PATCH", `/users/${name}`, { role: e.target.value })).then(render) },
              ["viewer", "operator", "system", "admin"].map((r) => h("option", { value: r, selected: r === u.role }, r))),
            h("button", { class: "secondary", "aria-label": `${u.disabled ? "Enable" : "Disable"} ${u.username}`, onclick: () => act(u.disabled ? "Enabled" : "Disabled", () => api("PATCH", `/users/${name}`, { disabled: !u.disabled })).then(render) }, u.disabled ? "Enable" : "Disable"),
            u.locked_until ? h("button", { class: "secondary", "aria-label": `Unlock ${u.username}`, onclick: () => act("Unlocked", () => api("POST", `/users/${name}/unlock`)).then(render) }, "Unlock") : null,
            h("button", { class: "danger", "aria-label": `Delete ${u.username}`, onclick: () => { if (confirm(`Delete ${u.username}?`)) act("Deleted", () => api("DELETE", `/users/${name}`)).then(render); } }, "Delete"))));
      })))));
  };
  await render();
}

// ---- routing -------------------------------------------------------------------------------

const current = { scope: new Scope(), generation: 0 };

async function route() {
  current.scope.end();
  const scope = (current.scope = new Scope());
  const generation = ++current.generation;
  const main = document.getElementById("main");
  const view = h("div");
  fill(main, view);
  if (!session.me) {
    try {
      // Without the CSRF cookie there is no session to ask about (and no 401 to log).
      if (!csrf()) throw new Error("signed out");
      signedIn(await api("GET", "/auth/me"));
    } catch {
      if (generation === current.generation) loginView(view);
      return;
    }
  }
  const hash = location.hash || "#/";
  const path = hash.replace(/\?.*$/, "");
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("href");
    const active = target === "#/" ? path === "#/" : path.startsWith(target);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const params = queryOf(hash);
  try {
    if (path === "#/" || path === "#") await overviewView(view, scope);
    else if (path === "#/tasks") await tasksView(view, params, scope);
    else if (path.startsWith("#/tasks/")) await taskView(view, decodeURIComponent(path.slice(8)), scope);
    else if (path.startsWith("#/workflows/")) await workflowView(view, decodeURIComponent(path.slice(12)), scope);
    else if (path === "#/events") eventsView(view, scope);
    else if (path === "#/engines") await enginesView(view, scope);
    else if (path === "#/locks") await locksView(view, scope);
    else if (path === "#/plugins") await pluginsView(view);
    else if (path === "#/users") await usersView(view);
    else view.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the overview")));
  } catch (error) {
    if (generation === current.generation && session.me) {
      // Said on the page, and logged: a view that fails to render is a bug to see.
      console.error(`the view ${path} failed:`, error);
      view.append(h("p", { class: "error", role: "alert" }, error.message));
    }
  }
}

window.addEventListener("hashchange", () => {
  // Views are "#/..."; any other fragment is an in-page link.
  if (location.hash && !location.hash.startsWith("#/")) return;
  route();
  document.getElementById("main").focus({ preventScroll: true });
});
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
document.getElementById("logout").addEventListener("click", async () => {
  await api("POST", "/auth/logout").catch(() => {});
  signedOut();
});
route();
