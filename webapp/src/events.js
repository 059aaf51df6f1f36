// The events WebSocket (/api/v1/events): receive-only, JSON {type, data}.
//
// The first message is always "ready"; after it no event is missed, so the app
// reloads its state on every "ready" (first connect and every reconnect). A closed
// socket (node restart, 4000 slow_client, network blip) reconnects by itself with
// jittered exponential backoff; after a few failures in a row, or at once when the node
// closed it because every browser was signed out (4001), it asks the API whether the
// session still holds (a 401 there reloads the page into the locked page). A restarted
// node keeps the session (its secret is in the data dir): the tab just reconnects.

import { get } from "./api.js";

const MIN_DELAY = 300;
const MAX_DELAY = 10000;
const SIGNED_OUT = 4001; // the node revoked browser sessions ("sign out everywhere")

export function connectEvents({ onEvent, onState }) {
  let socket = null;
  let delay = MIN_DELAY;
  let failures = 0;
  let timer = null;
  let stopped = false;

  function schedule() {
    if (stopped) {
      return;
    }
    const wait = delay / 2 + Math.random() * delay;
    delay = Math.min(delay * 2, MAX_DELAY);
    timer = window.setTimeout(open, wait);
  }

  function open() {
    timer = null;
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${window.location.host}/api/v1/events`);
    onState("connecting");
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (!event || typeof event.type !== "string") {
        return;
      }
      if (event.type === "ready") {
        delay = MIN_DELAY;
        failures = 0;
        onState("live");
      }
      onEvent(event);
    };
    socket.onclose = (event) => {
      socket = null;
      if (stopped) {
        return;
      }
      onState("offline");
      failures += 1;
      if (event.code === SIGNED_OUT || failures % 3 === 0) {
        // A refused handshake looks like any other close: ask the API (401 reloads).
        get("/me").catch(() => {});
      }
      schedule();
    };
  }

  function wake() {
    // The tab became visible or the network came back: try now, not after the backoff.
    if (!stopped && socket === null && timer !== null) {
      window.clearTimeout(timer);
      delay = MIN_DELAY;
      open();
    }
  }

  window.addEventListener("online", wake);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      wake();
    }
  });
  open();

  return {
    stop() {
      stopped = true;
      if (timer !== null) {
        window.clearTimeout(timer);
      }
      if (socket) {
        socket.close(1000);
      }
    },
  };
}
