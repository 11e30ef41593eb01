// The jobs view: one page of jobs from GET /api/jobs, kept live by
// GET /api/stream (read with fetch, so that the bearer token can be sent, and
// resumed with Last-Event-ID). Every value shown goes through textContent:
// nothing from the server is ever parsed as HTML. The helpers it uses ($, el,
// api, say…) are common.js's.
//
// Its filters live in the route: "#/jobs?status=failed&type=…&q=…" (q: an id
// prefix, or text in a field the job's type declares searchable). On the
// first page with no filter a job that starts appears at the top as it
// starts, and the oldest row drops off; on a filtered or later page the page
// stays as it is and a "N new jobs — show" button counts the new ones.
"use strict";

const PAGE = 50;
const state = {
  offset: 0,
  status: "",           // a job status, "active", or "" for all
  type: "",             // a job type, or "" for all
  q: "",                // the search, or ""
  newest: "",           // created_at of the newest job under these filters
  loads: 0,             // the latest page load asked for (older answers are dropped)
  jobs: new Map(),      // id -> job shown on this page
  order: [],            // ids in display order
  samples: new Map(),   // "id/stage" -> [[ms, done], ...] for rate and ETA
  selected: null,
  lastEventId: null,
  newJobs: 0,
  seen: new Set(),      // ids of the new jobs counted
};

// ---- rate and ETA -------------------------------------------------------

function record(job) {
  const now = Date.now();
  for (const [name, stage] of Object.entries(job.stages)) {
    const key = job.id + "/" + name;
    const done = stage.completed_items + stage.failed_items;
    const list = state.samples.get(key) || [];
    if (!list.length || list[list.length - 1][1] !== done) list.push([now, done]);
    while (list.length > 2 && now - list[0][0] > 15000) list.shift();
    state.samples.set(key, list);
  }
}

function rateAndEta(job, name, stage) {
  const list = state.samples.get(job.id + "/" + name) || [];
  if (stage.status !== "in_progress" || list.length < 2) return "";
  const [t0, d0] = list[0];
  const [t1, d1] = list[list.length - 1];
  const seconds = (Date.now() - t0) / 1000;
  if (seconds <= 0 || d1 <= d0) return "";
  const rate = (d1 - d0) / Math.max(seconds, (t1 - t0) / 1000);
  const left = stage.total_items - stage.completed_items - stage.failed_items;
  let text = rate.toFixed(rate < 10 ? 1 : 0) + "/s";
  if (stage.total_final && left > 0) text += ", ETA " + Math.ceil(left / rate) + " s";
  return text;
}

// ---- drawing --------------------------------------------------------------

function stageRow(job, name, stage) {
  const row = el("div", null, "stage");
  row.dataset.stage = name;
  row.append(el("span", name));
  const total = stage.total_items;
  const done = stage.completed_items, failed = stage.failed_items;
  const bar = el("div", null, "bar");
  bar.setAttribute("role", "progressbar");
  const percent = total > 0 ? Math.floor((100 * (done + failed)) / total) : (stage.status === "completed" ? 100 : 0);
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-label", name);
  const ok = el("div", null, "done");
  ok.style.width = total > 0 ? (100 * done) / total + "%" : (stage.status === "completed" ? "100%" : "0");
  const bad = el("div", null, "failed");
  bad.style.width = total > 0 ? (100 * failed) / total + "%" : "0";
  bar.append(ok, bad);
  row.append(bar);
  let label = done + (failed ? " + " + failed + " failed" : "") + " / " + total + (stage.total_final ? "" : "+");
  label += " (" + percent + "%)";
  const extra = rateAndEta(job, name, stage);
  row.append(el("span", extra ? label + " · " + extra : label, "counts"));
  return row;
}

function jobRow(job) {
  const tr = el("tr");
  tr.dataset.job = job.id;
  if (state.selected === job.id) tr.className = "selected";
  const idCell = el("td");
  const link = el("a", job.id.slice(0, 12));
  link.href = "#" + encodeURIComponent(job.id);
  link.title = job.id;
  link.addEventListener("click", (event) => { event.preventDefault(); select(job.id); });
  idCell.append(link, el("div", job.job_type, "type"));
  if (job.collection && job.collection.path) idCell.append(el("div", job.collection.path, "path"));
  tr.append(idCell);
  const status = el("td", job.status.replace("_", " "), "status-" + job.status);
  status.dataset.status = job.status;
  if (job.message) status.append(el("div", job.message, "why"));
  tr.append(status);
  const stages = el("td");
  for (const [name, stage] of Object.entries(job.stages)) stages.append(stageRow(job, name, stage));
  tr.append(stages);
  tr.append(el("td", new Date(job.updated_at).toLocaleTimeString()));
  const actions = el("td");
  if (job.status === "pending" || job.status === "in_progress") {
    const button = el("button", "Cancel");
    button.type = "button";
    button.addEventListener("click", () => cancel(job.id));
    actions.append(button);
  }
  const failedItems = Object.values(job.stages).some((stage) => stage.failed_items > 0);
  const ended = job.status === "failed" || job.status === "cancelled" || (job.status === "completed" && failedItems);
  if (job.job_type === "collection-scan" && ended) {
    const button = el("button", "Retry failed");
    button.type = "button";
    button.addEventListener("click", () => retry(job.id));
    actions.append(button);
  }
  tr.append(actions);
  return tr;
}

function draw() {
  const body = document.querySelector("#jobs tbody");
  const rows = state.order.map((id) => jobRow(state.jobs.get(id)));
  body.replaceChildren(...rows);
  $("page-label").textContent = "page " + (state.offset / PAGE + 1);
  $("prev").disabled = state.offset === 0;
  showNewJobs();
}

function showNewJobs() {
  $("new-jobs").hidden = state.newJobs === 0;
  $("new-jobs").textContent = state.newJobs + " new job" + (state.newJobs === 1 ? "" : "s") + " — show";
}

function redrawJob(job) {
  const old = document.querySelector('#jobs tr[data-job="' + CSS.escape(job.id) + '"]');
  if (old) old.replaceWith(jobRow(job));
}

// ---- data ---------------------------------------------------------------

function filters() {
  const query = new URLSearchParams();
  if (state.status) query.set("status", state.status);
  if (state.type) query.set("type", state.type);
  if (state.q) query.set("q", state.q);
  return query;
}

function unfiltered() { return !state.status && !state.type && !state.q; }

async function loadPage() {
  const ticket = ++state.loads;
  const query = filters();
  query.set("limit", String(PAGE));
  query.set("offset", String(state.offset));
  try {
    const page = await api("GET", "/api/jobs?" + query);
    // On a later page, the newest job under these filters is page 1's first.
    const first = state.offset === 0 ? page : await api("GET", "/api/jobs?" + filters() + "&limit=1");
    if (ticket !== state.loads) return;  // a newer load was asked for meanwhile
    state.newest = first.jobs.length ? first.jobs[0].created_at : "";
    state.jobs = new Map(page.jobs.map((job) => [job.id, job]));
    state.order = page.jobs.map((job) => job.id);
    for (const key of [...state.samples.keys()]) {  // forget the jobs no longer shown
      if (!state.jobs.has(key.slice(0, key.indexOf("/")))) state.samples.delete(key);  // ids hold no "/"
    }
    page.jobs.forEach(record);
    state.newJobs = 0;
    state.seen = new Set();
    $("next").disabled = page.next_offset === null;
    draw();
  } catch (error) {
    say("Could not load the jobs: " + error.message, true);
  }
}

function newer(a, b) {  // newest first, as the API orders them
  if (a.created_at !== b.created_at) return a.created_at > b.created_at ? -1 : 1;
  return a.id > b.id ? -1 : (a.id < b.id ? 1 : 0);
}

// Whether a job may be one of the filtered list's (a search by a field is
// the server's to tell: only an id prefix is checked here).
function mayMatch(job) {
  const active = job.status === "pending" || job.status === "in_progress";
  if (state.status && !(state.status === "active" ? active : state.status === job.status)) return false;
  if (state.type && state.type !== job.job_type) return false;
  return !state.q || job.id.startsWith(state.q);
}

// Whether a job not shown belongs on the unfiltered first page: every job
// newer than its oldest row is on it, so one that is not is new. The JSON's
// times are to the millisecond, the store's finer: a job of the oldest row's
// millisecond that is not shown is older than it.
function onFirstPage(job) {
  if (state.order.length < PAGE) return true;
  return job.created_at > state.jobs.get(state.order[state.order.length - 1]).created_at;
}

// A new job on the unfiltered first page: in its place at the top, the page
// kept at its size (the oldest row drops off, to the next page).
function showAtTop(job) {
  record(job);
  // Before the first row it is newer than; the rows keep the server's order
  // (its times are finer than the milliseconds the JSON shows).
  const at = state.order.findIndex((id) => newer(job, state.jobs.get(id)) < 0);
  state.order.splice(at < 0 ? state.order.length : at, 0, job.id);
  state.jobs.set(job.id, job);
  while (state.order.length > PAGE) {
    const gone = state.order.pop();
    state.jobs.delete(gone);
    for (const key of [...state.samples.keys()]) if (key.startsWith(gone + "/")) state.samples.delete(key);
    $("next").disabled = false;
  }
  draw();
}

// A job from the stream: the row updated in place if it is on this page; a
// job created after the newest one under the filters is new: on the
// unfiltered first page it is shown at the top at once, elsewhere it is
// counted (the "show" button goes to the first page); anything else is on
// another page and waits for it.
function apply(job, fromSnapshot) {
  const shown = state.jobs.get(job.id);
  if (shown) {
    if (shown.seq > job.seq) return;  // an older write than the one shown
    record(job);  // rate and ETA: for the jobs shown only
    state.jobs.set(job.id, job);
    redrawJob(job);
  } else if (state.offset === 0 && unfiltered() && onFirstPage(job)) {
    showAtTop(job);
  } else if (!fromSnapshot && job.created_at > state.newest && mayMatch(job)) {
    if (!state.seen.has(job.id)) {
      state.seen.add(job.id);
      state.newJobs += 1;
      showNewJobs();
    }
  }
  if (state.selected === job.id && (Date.now() - (state.detailAt || 0) > 2000 || job.status !== state.detailStatus)) {
    showDetail(job);  // at most every 2 s while it moves
  }
}

async function cancel(id) {
  try {
    const result = await api("POST", "/api/jobs/" + encodeURIComponent(id) + "/cancel");
    apply(result.job, false);
    say(result.cancelled ? "Job " + id + " cancelled." : "Job " + id + " had already ended.");
  } catch (error) {
    say("Cancel refused: " + error.message, true);
  }
}

async function retry(id) {
  try {
    const result = await api("POST", "/api/jobs/" + encodeURIComponent(id) + "/retry");
    say(result.failed_items + " failed items re-driven in job " + result.job.id + ".");
    if (state.offset === 0) await loadPage();
  } catch (error) {
    say("Retry refused: " + error.message, true);
  }
}

async function select(id) {
  state.selected = id;
  draw();
  let job = state.jobs.get(id);
  if (!job) {
    try { job = await api("GET", "/api/jobs/" + encodeURIComponent(id)); } catch (error) { say(error.message, true); return; }
  }
  showDetail(job);
}

async function showDetail(job) {
  state.detailAt = Date.now();
  state.detailStatus = job.status;
  $("detail").hidden = false;
  $("detail-title").textContent = "Job " + job.id;
  $("detail-message").textContent = job.status.replace("_", " ") + (job.message ? ": " + job.message : "");
  try {
    const [failures, events] = await Promise.all([
      api("GET", "/api/jobs/" + encodeURIComponent(job.id) + "/failures"),
      api("GET", "/api/jobs/" + encodeURIComponent(job.id) + "/events"),
    ]);
    const list = failures.failures.map((f) => {
      const item = el("li");
      item.append(el("code", f.image), el("span", " (" + f.stages.join(", ") + "): " + f.error));
      return item;
    });
    $("failures").replaceChildren(...(list.length ? list : [el("li", "none")]));
    const history = events.events.map((e) => el("li", new Date(e.at).toLocaleTimeString() + " " + e.kind + ": " + e.message));
    $("events").replaceChildren(...(history.length ? history : [el("li", "none")]));
  } catch (error) {
    say("Could not load the job's details: " + error.message, true);
  }
}

async function loadActivity() {
  try {
    const recent = await api("GET", "/api/events?limit=20");
    const items = recent.events.map((e) => {
      const item = el("li");
      const link = el("a", e.job_id.slice(0, 12));
      link.href = "#" + encodeURIComponent(e.job_id);
      link.addEventListener("click", (event) => { event.preventDefault(); select(e.job_id); });
      item.append(el("span", new Date(e.at).toLocaleTimeString() + " "), link, el("span", " " + e.kind + ": " + e.message));
      return item;
    });
    $("activity-list").replaceChildren(...(items.length ? items : [el("li", "none yet")]));
  } catch (error) {
    say("Could not load the monitor's activity: " + error.message, true);
  }
}

// ---- the stream -----------------------------------------------------------

async function follow() {
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (state.lastEventId) h["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/api/stream", { headers: h });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      $("live").textContent = "live";
      $("live").className = "live on";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (error) {
      say("Live updates interrupted (" + error.message + "); reconnecting…", true);
    }
    $("live").textContent = "reconnecting…";
    $("live").className = "live off";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function handle(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (id) state.lastEventId = id;
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "snapshot") {
    payload.jobs.forEach((job) => apply(job, true));
    if (!payload.complete) loadPage();
  } else if (event === "job") {
    apply(payload, false);
  }
}

// ---- controls -------------------------------------------------------------

$("token").value = token();
$("token").addEventListener("change", () => sessionStorage.setItem("jobtrack-token", $("token").value));
$("token-form").addEventListener("submit", (event) => event.preventDefault());
$("scan-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem("jobtrack-token", $("token").value);
  try {
    const job = await api("POST", "/api/scans", { path: $("scan-path").value });
    say("Scan started: job " + job.id);
    if (state.offset === 0) await loadPage();
  } catch (error) {
    say("Scan refused: " + error.message, true);
  }
});
// The filters go through the route ("#/jobs?…"), whose view applies them.
function filterRoute(changes) {
  const query = filters();
  for (const [key, value] of Object.entries(changes)) {
    if (value) query.set(key, value); else query.delete(key);
  }
  go("jobs", query);
}

$("status-filter").addEventListener("change", () => filterRoute({ status: $("status-filter").value }));
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  filterRoute({ q: $("job-search").value.trim() });
});
let searchTimer = null;
$("job-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => filterRoute({ q: $("job-search").value.trim() }), 400);
});
$("type-clear").addEventListener("click", () => filterRoute({ type: "" }));

function showFilters() {
  const known = [...$("status-filter").options].some((option) => option.value === state.status);
  $("status-filter").value = known ? state.status : "";
  if (document.activeElement !== $("job-search")) $("job-search").value = state.q;
  $("type-chip").hidden = !state.type;
  $("type-name").textContent = "type " + state.type;
}

function useFilters(wanted) {
  const changed = Object.keys(wanted).some((key) => wanted[key] !== state[key]);
  Object.assign(state, wanted);
  showFilters();
  if (changed) {
    state.offset = 0;
    loadPage();
  }
}

registerView("jobs", {
  enter(params) {
    useFilters({ status: params.get("status") || "", type: params.get("type") || "", q: params.get("q") || "" });
  },
  leave() {},
});
// The overview shows the jobs unfiltered: the newest first, live.
registerView("overview", { enter() { useFilters({ status: "", type: "", q: "" }); }, leave() {} });
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadPage(); });
$("next").addEventListener("click", () => { state.offset += PAGE; loadPage(); });
$("new-jobs").addEventListener("click", () => { state.offset = 0; loadPage(); });

loadPage().then(follow);
loadActivity();
setInterval(loadActivity, 5000);
