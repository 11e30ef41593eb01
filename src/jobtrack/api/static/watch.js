// The watch list (#watch-view): the active jobs that are stuck, waiting
// behind a backlog or being re-driven by the monitor, from GET /api/watch,
// newest first, each with why and the monitor's last action; polled every
// 2 s while shown. Its filters live in the route: "#/watch?state=stuck&type=…".
// Values go through textContent only.
"use strict";

const WATCH_PAGE = 50;
const watch = { state: "", type: "", offset: 0 };

const STATE_TEXT = { stuck: "stuck", waiting: "waiting", redriving: "re-driven" };

function watchRoute() {
  const params = new URLSearchParams();
  if (watch.state) params.set("state", watch.state);
  if (watch.type) params.set("type", watch.type);
  go("watch", params);
}

function watchedRow(job) {
  const tr = el("tr");
  tr.dataset.job = job.id;
  const idCell = el("td");
  const link = el("a", job.id.slice(0, 12));
  link.href = "#/jobs?" + new URLSearchParams({ q: job.id });
  link.title = job.id;
  idCell.append(link, el("div", job.job_type, "type"));
  tr.append(idCell);
  const why = el("td");
  const badges = el("div");
  for (const state of job.states) {
    const badge = el("span", STATE_TEXT[state] || state, "badge badge-" + state);
    badge.dataset.state = state;
    badges.append(badge);
  }
  why.append(badges, el("div", job.reason, "why"));
  tr.append(why);
  const action = el("td", null, "action");
  if (job.action) {
    action.dataset.kind = job.action.kind;
    action.append(el("strong", job.action.kind), el("span", " " + new Date(job.action.at).toLocaleTimeString()),
      el("div", job.action.message, "why"));
  } else {
    action.append(el("span", "none yet", "none"));
  }
  tr.append(action);
  tr.append(el("td", new Date(job.updated_at).toLocaleTimeString()));
  return tr;
}

function drawWatch(page) {
  const rows = page.jobs.map(watchedRow);
  if (!rows.length) {
    const empty = el("tr");
    const cell = el("td", "No job is stuck, waiting or being re-driven.", "none");
    cell.colSpan = 4;
    empty.append(cell);
    rows.push(empty);
  }
  document.querySelector("#watch tbody").replaceChildren(...rows);
  $("watch-page").textContent = "page " + (watch.offset / WATCH_PAGE + 1);
  $("watch-prev").disabled = watch.offset === 0;
  $("watch-next").disabled = page.next_offset === null;
}

async function loadWatch() {
  const query = new URLSearchParams({ limit: String(WATCH_PAGE), offset: String(watch.offset) });
  if (watch.state) query.set("state", watch.state);
  if (watch.type) query.set("type", watch.type);
  try {
    drawWatch(await api("GET", "/api/watch?" + query));
  } catch (error) {
    say("Could not load the stuck and waiting jobs: " + error.message, true);
  }
}

function drawWatchType() {
  const holder = $("watch-type");
  if (!watch.type) { holder.replaceChildren(); return; }
  const clear = el("button", "×");
  clear.type = "button";
  clear.title = "all job types";
  clear.addEventListener("click", () => { watch.type = ""; watchRoute(); });
  holder.replaceChildren(el("span", "type " + watch.type), clear);
}

$("watch-state").addEventListener("change", () => { watch.state = $("watch-state").value; watchRoute(); });
$("watch-prev").addEventListener("click", () => { watch.offset = Math.max(0, watch.offset - WATCH_PAGE); loadWatch(); });
$("watch-next").addEventListener("click", () => { watch.offset += WATCH_PAGE; loadWatch(); });

registerView("watch", pollingView(loadWatch, 2000, (params) => {
  const state = params.get("state") || "";
  watch.state = STATE_TEXT[state] ? state : "";
  watch.type = params.get("type") || "";
  watch.offset = 0;
  $("watch-state").value = watch.state;
  drawWatchType();
}));
