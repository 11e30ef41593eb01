// The workers view (#workers-view): every worker process that wrote a
// heartbeat, live first, then dead (with the moment its heartbeat stopped)
// and stopped ones; polled from /api/workers while the view is shown.
"use strict";

(function () {
  const POLL_MS = 1000;

  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const two = (n) => String(n).padStart(2, "0");
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function lastBeat(worker) {
    if (worker.state === "dead") return "dead since " + clock(worker.dead_since);
    if (worker.state === "stopped") return "stopped at " + clock(worker.stopped_at);
    const ago = Math.max(0, Math.round((Date.now() - new Date(worker.beat_at)) / 1000));
    return "beat " + ago + " s ago (" + clock(worker.beat_at) + ")";
  }

  function row(worker) {
    const tr = el("tr", null, "worker worker-" + worker.state);
    tr.dataset.workerId = worker.id;
    tr.dataset.state = worker.state;
    tr.append(
      el("td", worker.state, "state state-" + worker.state),
      el("td", worker.host),
      el("td", worker.pid),
      el("td", worker.stages.join(", ")),
      el("td", worker.concurrency + " / " + worker.prefetch),
      el("td", worker.done + " done, " + worker.failed + " failed"),
      el("td", worker.last_error ? worker.last_error + " (" + clock(worker.last_error_at) + ")" : ""),
      el("td", lastBeat(worker), "last-beat"),
    );
    tr.title = worker.id;
    return tr;
  }

  function table(workers) {
    const t = el("table", null, "workers");
    const head = el("tr");
    for (const name of ["state", "host", "pid", "stages", "concurrency / prefetch", "items",
      "last error", "last beat"]) head.append(el("th", name));
    t.append(el("thead"));
    t.tHead.append(head);
    const body = el("tbody");
    if (!workers.length) {
      const empty = el("tr");
      const cell = el("td", "no workers have written a heartbeat yet");
      cell.colSpan = 8;
      empty.append(cell);
      body.append(empty);
    }
    for (const worker of workers) body.append(row(worker));
    t.append(body);
    return t;
  }

  function draw(data) {
    const section = $("workers-view");
    let box = $("workers-box");
    if (!box) {
      box = el("div");
      box.id = "workers-box";
      section.append(box);
    }
    const c = data.counts;
    const summary = el("p", c.live + " live · " + c.dead + " dead · " + c.stopped +
      " stopped (heartbeat every " + data.heartbeat_interval + " s; dead after two missed)",
      "workers-summary");
    summary.id = "workers-summary";
    summary.dataset.live = c.live;
    summary.dataset.dead = c.dead;
    summary.dataset.stopped = c.stopped;
    box.replaceChildren(summary, table(data.workers));
  }

  async function poll() {
    try {
      draw(await api("GET", "/api/workers"));
    } catch (e) {
      say("workers: " + e.message, true);
    }
  }

  registerView("workers", pollingView(poll, POLL_MS));
})();
