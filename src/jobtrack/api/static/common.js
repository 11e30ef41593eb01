// What every view of the dashboard shares: element helpers, the API call
// with the bearer token, the status line, and the router. Loaded first; the
// views' scripts follow it, and router.js last.
//
// Views. Each view is one or more <section class="view" data-views="NAME …">
// of index.html and, when it needs code, a script that calls
// registerView(NAME, {enter(params), leave()}). The router shows the sections
// whose data-views lists the route's name, hides the others, calls the
// leaving view's leave() and the entered view's enter(params), where params
// is the URLSearchParams after "?" in the hash: "#/queues", "#/jobs?status=failed".
// The nav's links carry data-nav="NAME"; the current one gets aria-current.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
};

function token() { return sessionStorage.getItem("jobtrack-token") || ""; }
function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}
function say(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const reason = data && data.error ? data.error : response.status + " " + response.statusText;
    throw new Error(reason);
  }
  return data;
}

const views = new Map();   // name -> {enter(params), leave()}
const DEFAULT_VIEW = "overview";

// A view registered twice (the overview's counts and its chart, each from a
// script of its own) enters and leaves both, in the order registered.
function registerView(name, view) {
  const before = views.get(name);
  views.set(name, before ? {
    enter(params) { before.enter(params); view.enter(params); },
    leave() { before.leave(); view.leave(); },
  } : view);
}

// A view that calls load() on entering and every `ms` while shown; `prepare`
// (optional) first takes the route's params. One timer at most, stopped on leave.
function pollingView(load, ms, prepare) {
  let timer = null;
  return {
    enter(params) {
      if (prepare) prepare(params);
      load();
      clearInterval(timer);
      timer = setInterval(load, ms);
    },
    leave() {
      clearInterval(timer);
      timer = null;
    },
  };
}

function routeOf(hash) {
  const text = (hash || "").replace(/^#\/?/, "");
  const cut = text.indexOf("?");
  const name = (cut < 0 ? text : text.slice(0, cut)) || DEFAULT_VIEW;
  return { name, params: new URLSearchParams(cut < 0 ? "" : text.slice(cut + 1)) };
}

function go(name, params) {
  const query = params && String(params) ? "?" + params : "";
  location.hash = "#/" + name + query;
}
