// A very small client-side router over the History API (the node answers every
// extension-less path with index.html). Routes are plain data; `route` is reactive.
//
// Nothing security-relevant is taken from the URL: a route only picks a screen, and
// a join link in the query (/join?invite=...) only fills in the form: the user still
// presses "Join" (any web site can open our URL).

import { reactive } from "vue";

const ROUTES = [
  { name: "home", pattern: /^\/$/ },
  { name: "welcome", pattern: /^\/welcome$/ },
  { name: "newGroup", pattern: /^\/new-group$/ },
  { name: "join", pattern: /^\/join$/ },
  { name: "addContact", pattern: /^\/add-contact$/ },
  { name: "settings", pattern: /^\/settings$/ },
  { name: "group", pattern: /^\/g\/([0-9a-f]{32})$/, keys: ["groupId"] },
  { name: "groupInfo", pattern: /^\/g\/([0-9a-f]{32})\/info$/, keys: ["groupId"] },
  { name: "invite", pattern: /^\/g\/([0-9a-f]{32})\/invite$/, keys: ["groupId"] },
  { name: "direct", pattern: /^\/c\/([0-9]{15})$/, keys: ["userId"] },
  { name: "safety", pattern: /^\/safety\/([0-9]{15})$/, keys: ["userId"] },
];

export const route = reactive({ name: "home", path: "/", params: {}, query: {} });

function resolve() {
  const path = window.location.pathname || "/";
  const query = Object.fromEntries(new URLSearchParams(window.location.search));
  for (const candidate of ROUTES) {
    const match = candidate.pattern.exec(path);
    if (match) {
      const params = {};
      (candidate.keys || []).forEach((key, i) => {
        params[key] = match[i + 1];
      });
      Object.assign(route, { name: candidate.name, path, params, query });
      return;
    }
  }
  Object.assign(route, { name: "notFound", path, params: {}, query });
}

export function navigate(path, { replace = false } = {}) {
  if (path === window.location.pathname + window.location.search) {
    return;
  }
  if (replace) {
    window.history.replaceState(null, "", path);
  } else {
    window.history.pushState(null, "", path);
  }
  resolve();
}

export function startRouter() {
  window.addEventListener("popstate", resolve);
  resolve();
}
