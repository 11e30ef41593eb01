// The router: the hash names the view ("#/NAME?params"), see common.js.
// A hash that is not a route (such as "#" + a job id, which the jobs view's
// links use) leaves the view as it is.
"use strict";

let currentView = null;

function showRoute() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return;
  let { name, params } = routeOf(hash);
  const known = new Set();
  document.querySelectorAll("section.view").forEach((section) => {
    for (const view of section.dataset.views.split(/\s+/)) known.add(view);
  });
  if (!known.has(name)) name = DEFAULT_VIEW;
  // Every enter() follows a leave(), also when only the params change, so a
  // view never runs two timers.
  if (currentView && views.has(currentView)) views.get(currentView).leave();
  document.querySelectorAll("section.view").forEach((section) => {
    section.hidden = !section.dataset.views.split(/\s+/).includes(name);
  });
  document.querySelectorAll("[data-nav]").forEach((link) => {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
  currentView = name;
  if (views.has(name)) views.get(name).enter(params);
}

window.addEventListener("hashchange", showRoute);
showRoute();
