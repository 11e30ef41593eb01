// The queues view (#/queues): each stage queue of the server's app with its
// depth, consumers, messages in flight and oldest message where the broker
// tells, live every 2 s; below, each dead-letter queue that holds messages,
// with a checkbox per message and "Send back" / "Drop" for those checked.
// The dead letters are listed again at every poll (at most LISTS_PER_POLL
// queues a poll, in turn) and drawn again when their ids or count differ.
// Every server value goes through textContent.
"use strict";

(() => {
  const POLL_MS = 2000;
  const DEAD_LIMIT = 200;
  const LISTS_PER_POLL = 4;
  let polling = false;
  let nextList = 0;              // where the next poll's turn of listings starts
  const seenLists = new Map();   // queue -> its listing last drawn: ids and count
  const selected = new Map();    // queue -> Set of checked dead-letter ids

  function section() { return $("queues-view"); }

  function part(id, tag) {
    let node = $(id);
    if (!node) {
      node = el(tag || "div");
      node.id = id;
      section().append(node);
    }
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 120) return Math.round(seconds) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function count(value) { return value === null || value === undefined ? "–" : String(value); }

  function renderQueues(data) {
    part("queues-note", "p").textContent = data.broker === "memory"
      ? "The broker is this server's own (memory://): the queues of the scans it runs."
      : "The shared broker. – : the broker does not tell (RabbitMQ without its management API).";
    const table = part("queues-table", "table");
    table.replaceChildren();
    const head = el("tr");
    for (const name of ["queue", "type", "stage"]) head.append(el("th", name));
    for (const name of ["ready", "consumers", "unacked", "oldest", "dead letters"]) head.append(el("th", name, "num"));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const row of data.queues) {
      const tr = el("tr");
      tr.dataset.queue = row.queue;
      tr.append(el("td", row.queue), el("td", row.job_type), el("td", row.stage),
        el("td", row.messages, "num"), el("td", row.consumers, "num"),
        el("td", count(row.unacked), "num"), el("td", age(row.oldest_seconds), "num"),
        el("td", row.dead_letters, row.dead_letters ? "num dead-count" : "num"));
      tbody.append(tr);
    }
    if (!data.queues.length) {
      const tr = el("tr");
      const td = el("td", "this app has no stage queues");
      td.colSpan = 8;
      tr.append(td);
      tbody.append(tr);
    }
    table.append(thead, tbody);
  }

  function deadBlock(queue) {
    const holder = part("dead-letters");
    for (const block of holder.children) {
      if (block.dataset.deadQueue === queue) return block;
    }
    const block = el("div", null, "dead-block");
    block.dataset.deadQueue = queue;
    holder.append(block);
    return block;
  }

  function checked(queue) {
    if (!selected.has(queue)) selected.set(queue, new Set());
    return selected.get(queue);
  }

  async function act(queue, action, button) {
    const ids = [...checked(queue)];
    if (!ids.length) { say("check the dead letters to " + (action === "requeue" ? "send back" : "drop"), true); return; }
    button.disabled = true;
    try {
      const done = await api("POST", "/api/queues/" + encodeURIComponent(queue) + "/dead/" + action, { ids });
      const n = done.dead_letters.length;
      say((action === "requeue" ? "sent back " : "dropped ") + n + " dead letter" + (n === 1 ? "" : "s") + " of " + queue);
      checked(queue).clear();
      seenLists.delete(queue);
      await poll();
    } catch (e) {
      say(String(e.message || e), true);
      seenLists.delete(queue);  // part may be done: list it again
    } finally {
      button.disabled = false;
    }
  }

  function renderDead(queue, listed) {
    const block = deadBlock(queue);
    block.replaceChildren();
    const ids = new Set(listed.dead_letters.map((d) => d.id));
    const chosen = checked(queue);
    for (const id of [...chosen]) if (!ids.has(id)) chosen.delete(id);
    block.append(el("h3", "Dead letters of " + queue + " (" + listed.total + ")"));
    const bar = el("div", null, "dead-actions");
    const back = el("button", "Send back", "requeue");
    back.type = "button";
    back.addEventListener("click", () => act(queue, "requeue", back));
    const drop = el("button", "Drop", "drop");
    drop.type = "button";
    drop.addEventListener("click", () => act(queue, "drop", drop));
    bar.append(back, drop);
    if (listed.total > listed.dead_letters.length) {
      bar.append(el("span", "showing the oldest " + listed.dead_letters.length, "muted"));
    }
    block.append(bar);
    const table = el("table", null, "dead-table");
    const head = el("tr");
    const all = el("input");
    all.type = "checkbox";
    all.title = "all shown";
    const th = el("th");
    th.append(all);
    head.append(th);
    for (const name of ["id", "died", "deliveries", "job", "stage", "item", "reason"]) head.append(el("th", name));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    const boxes = [];
    for (const dead of listed.dead_letters) {
      const tr = el("tr");
      const box = el("input");
      box.type = "checkbox";
      box.dataset.id = dead.id;
      box.checked = chosen.has(dead.id);
      box.addEventListener("change", () => { if (box.checked) chosen.add(dead.id); else chosen.delete(dead.id); });
      boxes.push(box);
      const cell = el("td");
      cell.append(box);
      const job = el("td");
      if (dead.job_id) {
        const link = el("a", dead.job_id.slice(0, 8));
        link.href = "#" + encodeURIComponent(dead.job_id);
        link.title = dead.job_id;
        link.addEventListener("click", (event) => {
          event.preventDefault();
          go("jobs");
          if (typeof select === "function") select(dead.job_id);  // the jobs view's detail
        });
        job.append(link);
      } else {
        job.textContent = "–";
      }
      tr.append(cell, el("td", dead.id, "mono"), el("td", dead.died_at ? new Date(dead.died_at).toLocaleString() : "–"),
        el("td", count(dead.delivery_count), "num"), job, el("td", dead.stage || "–"),
        el("td", dead.key !== null ? dead.key : dead.preview, "mono"), el("td", dead.reason));
      tbody.append(tr);
    }
    all.addEventListener("change", () => {
      for (const box of boxes) {
        box.checked = all.checked;
        if (all.checked) chosen.add(box.dataset.id); else chosen.delete(box.dataset.id);
      }
    });
    table.append(thead, tbody);
    block.append(table);
  }

  // The queues whose dead letters this poll lists: those never drawn first,
  // then the others in turn, LISTS_PER_POLL at most.
  function listingsDue(rows) {
    const dead = rows.filter((row) => row.dead_letters > 0);
    const fresh = dead.filter((row) => !seenLists.has(row.queue));
    const start = dead.length ? nextList % dead.length : 0;
    const turn = [...dead.slice(start), ...dead.slice(0, start)].filter((row) => seenLists.has(row.queue));
    const due = [...fresh, ...turn].slice(0, LISTS_PER_POLL);
    nextList = start + Math.max(LISTS_PER_POLL - fresh.length, 0);
    return due;
  }

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const data = await api("GET", "/api/queues");
      renderQueues(data);
      const holder = part("dead-letters");
      const withDead = new Set(data.queues.filter((q) => q.dead_letters > 0).map((q) => q.queue));
      for (const block of [...holder.children]) {
        if (!withDead.has(block.dataset.deadQueue)) {
          block.remove();
          seenLists.delete(block.dataset.deadQueue);
          selected.delete(block.dataset.deadQueue);
        }
      }
      for (const row of listingsDue(data.queues)) {
        const listed = await api("GET", "/api/queues/" + encodeURIComponent(row.queue) + "/dead?limit=" + DEAD_LIMIT);
        const seen = listed.total + " " + listed.dead_letters.map((d) => d.id).join(" ");
        if (seenLists.get(row.queue) === seen) continue;
        seenLists.set(row.queue, seen);
        renderDead(row.queue, listed);
      }
    } catch (e) {
      say("queues: " + String(e.message || e), true);
    } finally {
      polling = false;
    }
  }

  registerView("queues", pollingView(poll, POLL_MS, () => seenLists.clear()));
})();
