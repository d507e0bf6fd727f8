// The edgeruntime dashboard: polls the JSON API under ./api/ and renders each section.
// No framework and no build step; every value goes through textContent (never innerHTML).
"use strict";

const POLL_MS = 1500;
const state = { functionsSeen: new Set(), busy: false };

// -- helpers ---------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function cell(content, props) {
  return el("td", props, content ?? "—");
}

function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toLocaleString(undefined, { hour12: false });
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.abs(seconds);
  const text = s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` :
    s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  return seconds < 0 ? `${text} ago` : text;
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  return value < 1000 ? `${value.toFixed(1)} ms` : ago(value / 1000);
}

function badge(status, kind) {
  return el("span", { class: `badge ${kind || status || "none"}` }, status || "—");
}

function httpBadge(status) {
  return badge(String(status), status < 400 ? "succeeded" : "failed");
}

function replaceRows(id, rows, empty, columns) {
  const body = document.getElementById(id);
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty))]));
}

async function api(path, options) {
  const response = await fetch(`api/${path}`, { headers: { accept: "application/json" }, ...options });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const reason = body && (body.error || body.msg) ? (body.error || body.msg) : response.statusText;
    throw new Error(`${options && options.method ? options.method : "GET"} ${path}: ${response.status} ${reason}`);
  }
  return body;
}

function showMessage(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind || "info";
  box.hidden = !text;
}

// -- sections --------------------------------------------------------------------------------

function renderFunctions(data) {
  // Under --workers N each serving process has its own workers: say which process holds each.
  const several = (data.processes || []).length > 1;
  const rows = data.functions.map((f) => {
    const limits = `wall ${f.limits.wall_clock_limit_sec} s · cpu ${f.limits.cpu_soft_limit_ms}/${f.limits.cpu_hard_limit_ms} ms · ` +
      `mem ${f.limits.memory_limit_mb} MB`;
    const boot = el("span", {}, badge(f.boot.status), f.boot.boots ? ` ${f.boot.boots} boot(s)` : "");
    if (f.boot.error) boot.append(el("div", { class: "error" }, f.boot.error));
    const workers = f.workers.length
      ? f.workers.map((w) => `${several ? `[${w.process}] ` : ""}${w.status} (${w.in_flight} in flight, ` +
        `${w.background_pending} background)`).join("; ")
      : "none";
    const last = f.last_invocation;
    const lastCell = last
      ? el("span", {}, httpBadge(last.status), ` ${last.trigger} · ${ms(last.duration_ms)} · ${when(last.at)}`)
      : "never";
    return el("tr", { dataset: { function: f.name } },
      el("th", { scope: "row" }, f.name, f.description ? el("div", { class: "description" }, f.description) : null,
        f.enabled ? null : el("div", { class: "muted" }, "disabled")),
      cell(el("code", {}, f.route)),
      cell(f.verify_jwt ? "on" : "off"),
      cell(limits, { class: "small" }),
      cell(boot),
      cell(workers, { class: "small" }),
      cell(lastCell));
  });
  replaceRows("functions-body", rows, "No functions.", 7);

  const select = document.querySelector("#run-filters select[name=function]");
  for (const f of data.functions) {
    if (!state.functionsSeen.has(f.name)) {
      state.functionsSeen.add(f.name);
      select.append(el("option", { value: f.name }, f.name));
    }
  }
}

function renderCron(data) {
  const rows = data.cron.map((c) => {
    const ticks = el("ul", { class: "ticks" }, ...c.ticks.slice(0, 5).map((t) =>
      el("li", {}, badge(t.status), ` ${t.trigger === "manual" ? "manual" : when(t.scheduled_for)}`,
        t.http_status ? ` · HTTP ${t.http_status}` : "", t.error ? el("div", { class: "error" }, t.error) : null)));
    const toggle = c.paused
      ? el("button", { type: "button", dataset: { action: "resume", cron: c.name }, "aria-label": `Resume ${c.name}` }, "Resume")
      : el("button", { type: "button", dataset: { action: "pause", cron: c.name }, "aria-label": `Pause ${c.name}` }, "Pause");
    return el("tr", { dataset: { cron: c.name } },
      el("th", { scope: "row" }, c.name, c.description ? el("div", { class: "description" }, c.description) : null,
        c.paused ? el("div", {}, badge("paused")) : null, c.enabled ? null : el("div", { class: "muted" }, "disabled")),
      cell(c.function),
      cell(el("span", {}, c.schedule_text, el("div", {}, el("code", {}, c.schedule)), el("div", { class: "muted" }, c.timezone))),
      cell(c.next_tick === null ? "—" : `${when(c.next_tick)} (in ${ago(c.next_tick - data.now)})`),
      cell(el("span", {}, c.last_tick === null ? "never" : when(c.last_tick), " ", c.last_status ? badge(c.last_status) : null,
        c.skipped ? el("div", { class: "warning" }, `${c.skipped} skipped recently`) : null)),
      cell(c.ticks.length ? ticks : "none"),
      cell(el("span", { class: "actions" },
        el("button", { type: "button", dataset: { action: "run-now", cron: c.name }, "aria-label": `Run ${c.name} now` }, "Run now"),
        toggle)));
  });
  replaceRows("cron-body", rows, "No cron jobs configured ([cron.<name>] in config.toml).", 7);
}

// Why the runtime cut a background task (the edge runtime's shutdown reasons), in words.
const CUT_REASONS = {
  WallClockTime: "wall clock limit",
  CPUTime: "CPU limit",
  Memory: "memory limit",
  EarlyDrop: "early drop",
  TerminationRequested: "server shutdown",
  Crash: "worker process crashed",
};

function cutReason(reason) {
  return CUT_REASONS[reason] ? `${CUT_REASONS[reason]} (${reason})` : reason;
}

function renderRuns(data) {
  const rows = data.runs.map((r) => {
    const tasks = r.tasks.length ? el("ul", { class: "tasks" }, ...r.tasks.map((t) =>
      el("li", {}, el("code", {}, t.name || "task"), " ", badge(t.status),
        t.status === "cut" ? ` cut: ${cutReason(t.cut_reason)}` : "", ` · ${ms(t.duration_ms)}`,
        t.status === "failed" && t.error ? el("div", { class: "error" }, t.error) : null))) : "none";
    return el("tr", { dataset: { execution: r.execution_id, function: r.function, status: r.status } },
      cell(when(r.started_at)),
      cell(r.function),
      cell(r.trigger),
      cell(badge(r.status)),
      cell(r.http_status),
      cell(ms(r.duration_ms)),
      cell(r.error ? el("span", { class: "error" }, r.error) : "—"),
      cell(tasks));
  });
  replaceRows("runs-body", rows, "No runs yet: invoke a function.", 8);
}

function renderQueue(data) {
  const stats = document.getElementById("queue-stats");
  const pairs = [["Depth (queued)", data.depth], ["Oldest queued", data.oldest_age_sec === null ? "—" : ago(data.oldest_age_sec)],
    ["Running", data.counts.running || 0], ["Succeeded", data.counts.succeeded || 0], ["Failed", data.counts.failed || 0]];
  stats.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  replaceRows("inflight-body", data.in_flight.map((l) => el("tr", {},
    cell(`#${l.job_id}`), cell(l.function), cell(`${l.attempt} of ${l.max_attempts}`), cell(ago(l.lease_age_sec)),
    cell(l.lease_expires_in_sec === null ? "—" : ago(l.lease_expires_in_sec)), cell(l.worker_id, { class: "small" }))),
    "Nothing in flight.", 6);
  replaceRows("jobs-body", data.jobs.map((j) => el("tr", { dataset: { job: j.id } },
    cell(`#${j.id}`), cell(j.function), cell(badge(j.status)), cell(`${j.attempt} of ${j.max_attempts}`),
    cell(when(j.run_at)), cell(j.last_error ? el("span", { class: "error" }, j.last_error) : "—"))),
    "No jobs.", 6);
}

function renderFailed(data) {
  const rows = data.failed.map((f) => {
    const retry = f.retry
      ? el("span", { class: "retry" }, `retried as #${f.retry.id} `, badge(f.retry.status || "gone"))
      : el("button", { type: "button", dataset: { action: "retry", failed: f.id }, "aria-label": `Retry failed job ${f.id}` }, "Retry");
    return el("tr", { dataset: { failed: f.id } },
      el("th", { scope: "row" }, `#${f.id}`, el("div", { class: "muted" }, `job #${f.job_id}`)),
      cell(f.function),
      cell(f.attempts),
      cell(when(f.failed_at)),
      cell(f.error ? el("span", { class: "error" }, f.error) : "—"),
      cell(el("span", {}, f.http_status ? `HTTP ${f.http_status} ` : "", f.response ? el("pre", {}, f.response) : null)),
      cell(retry),
      cell(el("button", { type: "button", dataset: { action: "delete", failed: f.id }, "aria-label": `Delete failed job ${f.id}` }, "Delete")));
  });
  replaceRows("failed-body", rows, "No failed jobs.", 8);
  document.getElementById("retry-all").disabled = !data.failed.some((f) => !f.retry);
}

// -- polling ---------------------------------------------------------------------------------

function runQuery() {
  const form = new FormData(document.getElementById("run-filters"));
  const params = new URLSearchParams();
  for (const [key, value] of form.entries()) if (value) params.set(key, value);
  params.set("limit", "50");
  return `runs?${params}`;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [functions, cron, runs, queue, failed] = await Promise.all([
      api("functions"), api("cron"), api(runQuery()), api("queue?limit=20"), api("failed"),
    ]);
    renderFunctions(functions);
    renderCron(cron);
    renderRuns(runs);
    renderQueue(queue);
    renderFailed(failed);
    const status = document.getElementById("status");
    status.textContent = `Live · updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
    status.className = "ok";
  } catch (error) {
    const status = document.getElementById("status");
    status.textContent = `Not updating: ${error.message} (retrying)`;
    status.className = "failing";
  } finally {
    state.busy = false;
  }
}

async function act(button) {
  const { action, cron, failed } = button.dataset;
  const requests = {
    "run-now": [`cron/${encodeURIComponent(cron)}/run`, "POST", `Started ${cron}.`],
    pause: [`cron/${encodeURIComponent(cron)}/pause`, "POST", `Paused ${cron}.`],
    resume: [`cron/${encodeURIComponent(cron)}/resume`, "POST", `Resumed ${cron}.`],
    retry: [`failed/${failed}/retry`, "POST", `Failed job #${failed} queued again.`],
    delete: [`failed/${failed}`, "DELETE", `Failed job #${failed} deleted.`],
    "retry-all": ["failed/retry-all", "POST", "All failed jobs queued again."],
  };
  const [path, method, done] = requests[action];
  if (action === "delete" && !window.confirm(`Delete failed job #${failed}?`)) return;
  button.disabled = true;
  try {
    await api(path, { method });
    showMessage(done, "info");
  } catch (error) {
    showMessage(error.message, "error");
  } finally {
    button.disabled = false;
  }
  await refresh();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button);
});
document.getElementById("retry-all").dataset.action = "retry-all";
document.getElementById("run-filters").addEventListener("change", refresh);
document.getElementById("run-filters").addEventListener("submit", (event) => event.preventDefault());

refresh();
setInterval(refresh, POLL_MS);
