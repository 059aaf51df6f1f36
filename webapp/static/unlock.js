// Unlocks the Parley UI (served by the node with the locked page; no inline scripts).
//
// The node prints http://127.0.0.1:PORT/#token=... . A URL fragment never leaves the
// browser: it is not in the request line, the server's logs or a Referer header. This
// script reads it, removes it from the address bar and history, trades it for an
// HttpOnly session cookie (POST /api/v1/session), and reloads the page.
// Without a fragment it asks whether the browser already holds a valid cookie (a
// SameSite=Strict cookie is not sent when the UI is opened from a link on another
// site, but is sent on this same-origin request) and, if so, reloads.
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var LOOP_KEY = "parley-unlock-at";

  function say(text) {
    if (statusEl) {
      statusEl.textContent = text;
    }
  }

  function enter(guarded) {
    if (guarded) {
      // Guard against a reload loop if the cookie is somehow not sent on navigation.
      var last = Number(window.sessionStorage.getItem(LOOP_KEY) || "0");
      var now = Date.now();
      if (now - last < 5000) {
        say("Your browser did not send the session cookie. Allow cookies for this address and open the printed address again.");
        return;
      }
      window.sessionStorage.setItem(LOOP_KEY, String(now));
    }
    window.location.replace(window.location.pathname + window.location.search);
  }

  var match = /(?:^#|&)token=([A-Za-z0-9_-]+)/.exec(window.location.hash);
  if (match) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    say("Unlocking…");
    window.fetch("/api/v1/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: match[1] }),
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error"
    }).then(function (response) {
      if (response.ok) {
        enter(false);
      } else {
        say("This link is not valid (any more). Open the address the node printed most recently.");
      }
    }, function () {
      say("The node did not answer. Is it still running?");
    });
  } else {
    window.fetch("/api/v1/session", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.ok) {
          enter(true);
        } else {
          say("No access key was given.");
        }
      }, function () {
        say("The node did not answer. Is it still running?");
      });
  }
}());
