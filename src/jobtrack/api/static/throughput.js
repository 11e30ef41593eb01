// The overview's live throughput chart (#overview-chart): items done and
// failed per job type and stage over the last hour, from /api/throughput,
// drawn as SVG lines (no library), with the last minute's and hour's totals.
// Polled every 2 s while the overview is shown. Joins any other code the
// overview view has (the router calls one enter/leave per view name).
"use strict";

(function () {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 720, H = 180, PAD = 28;
  const COLORS = ["#1565c0", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function line(values, max, color, dashed) {
    const n = Math.max(1, values.length - 1);
    const points = values.map((v, i) =>
      (PAD + (i * (W - 2 * PAD)) / n).toFixed(1) + "," + (H - PAD - (v * (H - 2 * PAD)) / max).toFixed(1));
    const attrs = { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 1.6 };
    if (dashed) attrs["stroke-dasharray"] = "4 3";
    return svg("polyline", attrs);
  }

  function chart(data) {
    let max = 1;
    for (const s of data.series) for (const v of s.done.concat(s.failed)) max = Math.max(max, v);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", class: "throughput-svg" });
    root.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#9aa3b2" }));
    root.append(svg("line", { x1: PAD, y1: PAD, x2: PAD, y2: H - PAD, stroke: "#9aa3b2" }));
    const top = svg("text", { x: 2, y: PAD + 4, "font-size": 10, fill: "#5b6474" });
    top.textContent = String(max);
    const zero = svg("text", { x: 2, y: H - PAD + 4, "font-size": 10, fill: "#5b6474" });
    zero.textContent = "0";
    const from = svg("text", { x: PAD, y: H - 8, "font-size": 10, fill: "#5b6474" });
    from.textContent = "-" + data.minutes + " min";
    const to = svg("text", { x: W - PAD, y: H - 8, "font-size": 10, fill: "#5b6474", "text-anchor": "end" });
    to.textContent = "now (per " + data.bucket_seconds + " s)";
    root.append(top, zero, from, to);
    data.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      root.append(line(s.done, max, color, false));
      if (s.failed.some((v) => v > 0)) root.append(line(s.failed, max, "#c62828", true));
    });
    return root;
  }

  function legend(data) {
    const t = el("table", null, "throughput-legend");
    const head = el("tr");
    for (const name of ["", "job type / stage", "last minute done", "failed",
      "last hour done", "failed"]) head.append(el("th", name));
    t.append(el("thead"));
    t.tHead.append(head);
    const body = el("tbody");
    data.series.forEach((s, i) => {
      const tr = el("tr");
      const swatch = el("td", "■");
      swatch.style.color = COLORS[i % COLORS.length];
      tr.append(swatch, el("td", s.job_type + " / " + s.stage),
        el("td", s.last_minute.done), el("td", s.last_minute.failed),
        el("td", s.last_hour.done), el("td", s.last_hour.failed));
      body.append(tr);
    });
    const all = el("tr", null, "total");
    all.append(el("td"), el("td", "all stages"),
      el("td", data.last_minute.done), el("td", data.last_minute.failed),
      el("td", data.last_hour.done), el("td", data.last_hour.failed));
    body.append(all);
    t.append(body);
    return t;
  }

  function draw(data) {
    const box = $("overview-chart");
    box.dataset.lastMinuteDone = data.last_minute.done;
    box.dataset.lastMinuteFailed = data.last_minute.failed;
    box.dataset.lastHourDone = data.last_hour.done;
    box.dataset.lastHourFailed = data.last_hour.failed;
    box.dataset.updated = data.now;
    const title = el("h2", "Throughput");
    const totals = el("p", data.last_minute.done + " done and " + data.last_minute.failed +
      " failed in the last minute; " + data.last_hour.done + " done and " +
      data.last_hour.failed + " failed in the last hour", "throughput-totals");
    totals.id = "throughput-totals";
    const parts = [title, totals];
    if (data.series.length) parts.push(chart(data), legend(data));
    else parts.push(el("p", "no items counted by any worker in the last " + data.minutes + " minutes"));
    box.replaceChildren(...parts);
  }

  async function poll() {
    try {
      draw(await api("GET", "/api/throughput?minutes=60"));
    } catch (e) {
      say("throughput: " + e.message, true);
    }
  }

  registerView("overview", pollingView(poll, POLL_MS));  // beside the overview's counts (common.js chains them)
})();
