// The node API (docs/api.md) as the app uses it: nothing else is called.
//
// Every request goes to our own origin with the session cookie (credentials
// "same-origin"); every POST/DELETE carries Content-Type: application/json, as the
// server requires. Errors become ApiError with the server's code and its message,
// which is written for people; a few codes get a friendlier sentence here. A 401 means
// this browser was signed out (here or by "Sign out everywhere"; a restart of the node
// keeps the session): the page reloads into the locked page, which explains what to do.

export const API = "/api/v1";
export const MAX_FILE_BYTES = 26214400; // 25 MiB: the node refuses more (413 file_too_large)

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

const FRIENDLY = {
  node_unreachable: "Your Parley node did not answer. Is it still running?",
  file_too_large: "That file is too large: Parley sends files of up to 25 MB.",
  body_too_large: "That is too large to send.",
  text_too_long: "That message is too long (the limit is 64 KiB of text).",
  identity_changed:
    "The safety number of this contact changed. Compare it with them before you continue.",
  discovery_unavailable:
    "Could not reach the bootstrap server or the DHT, so the other side cannot be found right now (you may be offline).",
  unknown_user: "No Parley user with that ID is registered.",
  not_member: "You are no longer a member of this group.",
  not_admin: "Only admins can do that.",
  invite_malformed: "That is not a Parley invite link (or it was cut off while copying).",
  invite_expired: "That invite has expired. Ask for a new one.",
  invite_invalid: "That invite is not valid (it may have been used already). Ask for a new one.",
  removed_member: "You were removed from that group after this invite was made: ask an admin for a new invite.",
  own_invite: "That is an invite you made yourself.",
  unknown_group: "The person who invited you is no longer in that group. Ask a member for a new invite.",
  unknown_identity: "The inviter's node does not know your keys yet. Try again in a minute.",
  key_mismatch:
    "Their key changed while you were comparing: this is a new safety number. Compare it again.",
  bad_user_id: "A Parley ID has 15 digits.",
  empty_message: "Type a message or attach a file first.",
  empty_file: "That file is empty: there is nothing to send.",
  internal_error: "Your node hit an unexpected error (its log has the details).",
  unsupported_media_type: "Your node did not accept that upload (is it older than this app?).",
  not_yours: "You can only edit or delete your own messages.",
  too_late: "Messages can be edited or deleted for everyone only within 24 hours of sending them.",
  too_many_edits: "A message can be edited at most 10 times.",
  deleted: "That message was deleted.",
  bad_emoji: "A reaction is one emoji.",
  wrong_passphrase: "That is not your current passphrase: nothing was changed.",
  bad_passphrase: "A passphrase has 1 to 1024 characters.",
};

/** A sentence for a bare error code (an event's `reason`): never the raw code. */
export function describeCode(code) {
  return FRIENDLY[code] || "Ask for a new invite, or try again later.";
}

/** A sentence for people: our wording for known codes, else the server's message. */
export function describeError(err) {
  if (err instanceof ApiError && err.local) {
    return err.message; // made here, already in words for people
  }
  if (err instanceof ApiError) {
    return FRIENDLY[err.code] || err.message || `The node refused (${err.code}).`;
  }
  return (err && err.message) || String(err);
}

let reloading = false;

function sessionLost() {
  // The session was revoked or the cookie cleared: the locked page says what to do.
  if (!reloading) {
    reloading = true;
    window.location.reload();
  }
}

async function parseError(response) {
  let code = "http_" + response.status;
  let message = `The node answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      code = body.error;
      message = typeof body.message === "string" ? body.message : message;
    }
  } catch {
    // not JSON: keep the generic text
  }
  return new ApiError(response.status, code, message);
}

/** JSON request to /api/v1; resolves to the parsed body (null for 204). */
export async function request(method, path, body) {
  const init = { method, credentials: "same-origin", cache: "no-store", redirect: "error" };
  if (method !== "GET") {
    init.headers = { "Content-Type": "application/json" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch {
    throw new ApiError(0, "node_unreachable", FRIENDLY.node_unreachable);
  }
  if (response.status === 401) {
    sessionLost();
    throw new ApiError(401, "unauthenticated", "Signed out: reloading.");
  }
  if (!response.ok) {
    throw await parseError(response);
  }
  if (response.status === 204) {
    return null;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => request("GET", path);
export const post = (path, body = {}) => request("POST", path, body);
export const del = (path, body) => request("DELETE", path, body);
export const put = (path, body) => request("PUT", path, body);
export const patch = (path, body) => request("PATCH", path, body);

/**
 * Multipart upload (field `file`, optional `text`) with progress: fetch() cannot report
 * upload progress, XMLHttpRequest can. Returns {promise, abort}.
 */
export function upload(path, file, text, onProgress, replyTo = "") {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    if (text) {
      form.append("text", text);
    }
    if (replyTo) {
      form.append("reply_to", replyTo);
    }
    xhr.open("POST", API + path);
    xhr.withCredentials = false; // same origin: the cookie goes along anyway
    xhr.responseType = "text";
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        onProgress(event.loaded, event.total);
      }
    };
    xhr.onload = () => {
      if (xhr.status === 401) {
        sessionLost();
        reject(new ApiError(401, "unauthenticated", "Signed out: reloading."));
        return;
      }
      let body = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else if (body && typeof body.error === "string") {
        reject(new ApiError(xhr.status, body.error, body.message || body.error));
      } else {
        reject(new ApiError(xhr.status, "http_" + xhr.status, `The node answered ${xhr.status}.`));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, "node_unreachable", FRIENDLY.node_unreachable));
    xhr.onabort = () => reject(new ApiError(0, "aborted", "Upload cancelled."));
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

/** Where a stored attachment is served (same origin, cookie-authenticated). */
export function attachmentUrl(id) {
  return `${API}/attachments/${encodeURIComponent(id)}`;
}
