// How others reach this node and how each link travels (docs/api.md, "Reachability"),
// in words: the Settings card, and the path badges of contacts and group members.
// Paths change while a screen is open (a relayed link is hole-punched, a peer goes
// offline), so the screens that show them reload GET /links every few seconds.

import { onBeforeUnmount, onMounted, reactive } from "vue";
import { get } from "./api.js";

export const links = reactive({
  paths: {}, // user id -> path of our link to them (GET /links); not listed: no link
  loaded: false,
});

/** GET /links: one answer for every badge on screen (it never fails for a group we
 *  just left, as GET /groups/{id} would). */
export async function loadLinks() {
  links.paths = (await get("/links")).links || {};
  links.loaded = true;
}

/** The path of our link to `userId`, null when there is none; undefined until the
 *  first answer (nothing is shown then rather than a wrong "Not connected"). */
export function pathOf(userId) {
  return links.loaded ? links.paths[userId] || null : undefined;
}

/** Call `load` now and every `ms` while the calling component is mounted; a failed
 *  load keeps what was shown (the next one tries again). */
export function useRefresh(load, ms = 5000) {
  let timer = 0;
  const run = () => Promise.resolve(load()).catch(() => {});
  onMounted(() => {
    run();
    timer = window.setInterval(run, ms);
  });
  onBeforeUnmount(() => window.clearInterval(timer));
}

const PATHS = {
  lan: ["LAN", "Linked over your local network"],
  direct: ["Direct", "Linked directly over the internet"],
  hole_punched: ["Hole-punched", "Linked directly through both routers (hole-punched)"],
  relayed: ["Relayed", "Linked through a relay: it sees who talks to whom, never what is said"],
  bluetooth: ["Bluetooth", "Linked over Bluetooth"],
};
const NOT_CONNECTED = ["Not connected", "Not connected now: messages wait and go out when a link comes up"];

/** [short label, sentence] for a link path (null: no link). */
export function pathWords(path) {
  return path ? PATHS[path] || [path, `Linked (${path})`] : NOT_CONNECTED;
}

/** Where a ws:// URL points, for people: host and port, the relay's host for a relay
 *  address (ws://RELAY/relay/<our id>). */
export function hostOf(url) {
  try {
    const u = new URL(url);
    return u.host;
  } catch {
    return url;
  }
}

/** The headline of the Settings card: {state, text} from `me.reachability`. */
export function reachHeadline(reach, bootstrap) {
  if (reach && reach.state === "unknown" && !bootstrap) {
    return { state: "unchecked", text: "Not checked: there is no bootstrap server to ask" };
  }
  if (reach && reach.state === "unknown" && reach.problem) {
    return { state: "failed", text: "Not checked yet: the bootstrap server could not check this node" };
  }
  if (!reach || reach.state === "unknown") {
    return { state: "unknown", text: "Checking…" };
  }
  if (reach.state === "public") {
    return { state: "public", text: `Reachable directly at ${hostOf(reach.public[0])}` };
  }
  if (reach.state === "relayed") {
    return { state: "relayed", text: `Behind a router — reachable through relay ${hostOf(reach.relays[0])}` };
  }
  return { state: "lan_only", text: "Only on this local network" };
}

const OFF_REASONS = {
  disabled: "off (turned off when the node was started)",
  not_on_lan: "off: the node listens on this computer only (loopback)",
  advertised: "off: the node was given its public address at start",
  no_bootstrap: "off: no bootstrap server to confirm a mapping from outside",
};

export function lanDiscoveryText(lan) {
  if (!lan) {
    return "";
  }
  return lan.state === "on" ? "on: announcing this node to your contacts on the local network and listening for theirs"
    : OFF_REASONS[lan.reason] || "off";
}

export function portMappingText(pm) {
  if (!pm) {
    return "";
  }
  if (pm.state === "mapped") {
    return `the router forwards ${hostOf(pm.address)} to this node (${pm.method})`;
  }
  if (pm.state === "trying") {
    return "asking the router to forward a port…";
  }
  if (pm.state === "failed") {
    return `not possible: ${pm.problem || "the router did not answer"} (trying again later)`;
  }
  return OFF_REASONS[pm.reason] || "off";
}

const RELAY_STATES = {
  connecting: "connecting…",
  reserved: "holding a reservation",
  refused: "refused",
  down: "not reachable",
};

export function relayText(r) {
  const words = RELAY_STATES[r.state] || r.state;
  return r.reason ? `${words} (${r.reason.replaceAll("_", " ")})` : words;
}
