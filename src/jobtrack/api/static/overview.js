// The overview's counts (#overview-counts): per job type and in total, the
// active, waiting, stuck, re-driven and failed jobs from GET /api/overview,
// polled every 2 s while the overview is shown. Each count links to its
// list: the jobs view filtered ("#/jobs?status=failed&type=…") or the watch
// list ("#/watch?state=stuck&type=…"). Values go through textContent only.
"use strict";

const COUNTS = [
  // [field, heading, the list it links to (null: none)]
  ["active", "active", (type) => ["jobs", { status: "active", type }]],
  ["waiting", "waiting", (type) => ["watch", { state: "waiting", type }]],
  ["stuck", "stuck", (type) => ["watch", { state: "stuck", type }]],
  ["redriving", "re-driven", (type) => ["watch", { state: "redriving", type }]],
  ["failed", "failed", (type) => ["jobs", { status: "failed", type }]],
  ["completed", "completed", (type) => ["jobs", { status: "completed", type }]],
];

function routeHref(view, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) query.set(key, value);
  const text = String(query);
  return "#/" + view + (text ? "?" + text : "");
}

function countCell(counts, field, link) {
  const td = el("td", null, "count");
  td.dataset.count = field;
  const value = counts[field];
  const [view, params] = link(counts.job_type);
  const a = el("a", value);
  a.href = routeHref(view, params);
  if (value > 0 && field !== "active" && field !== "completed") a.className = "count-" + field;
  td.append(a);
  return td;
}

function countsRow(counts, label) {
  const tr = el("tr");
  tr.dataset.type = counts.job_type;
  tr.append(el("th", label));
  for (const [field, , link] of COUNTS) tr.append(countCell(counts, field, link));
  return tr;
}

function drawOverview(data) {
  const table = el("table", null, "counts");
  table.id = "counts";
  const head = el("tr");
  head.append(el("th", "job type"));
  for (const [, heading] of COUNTS) head.append(el("th", heading));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  for (const counts of data.types) tbody.append(countsRow(counts, counts.job_type));
  const tfoot = el("tfoot");
  tfoot.append(countsRow(data.totals, "all types"));
  table.append(thead, tbody, tfoot);
  const note = el("p", "Stuck: active and not written for " + data.stuck_after + " s. "
    + "Waiting: left alone by the monitor behind a backlog being consumed.", "note");
  $("overview-counts").replaceChildren(table, note);
}

async function loadOverview() {
  try {
    drawOverview(await api("GET", "/api/overview"));
  } catch (error) {
    say("Could not load the overview: " + error.message, true);
  }
}

registerView("overview", pollingView(loadOverview, 2000));
