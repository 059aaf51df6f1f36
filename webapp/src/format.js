// Small pure helpers for showing things to people.

/** 15 digits as "123 456 789 012 345". */
export function groupDigits(id, size = 3) {
  const digits = String(id || "").replace(/\D/g, "");
  const parts = [];
  for (let i = 0; i < digits.length; i += size) {
    parts.push(digits.slice(i, i + size));
  }
  return parts.join(" ");
}

/** Bytes for people: 1 KB = 1024 bytes here, as file managers on most systems show. */
export function formatBytes(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes) || bytes < 0) {
    return "";
  }
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  const units = ["KB", "MB", "GB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export function formatTime(ms) {
  if (!ms) {
    return "";
  }
  const date = new Date(ms);
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (sameDay) {
    return time;
  }
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

export function fullTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

/** Delivery states in the order they move: a message's summary is its slowest member. */
export const STATES = ["pending", "sent", "delivered", "read"];

export const STATE_LABEL = {
  pending: "Pending: not with anyone else yet",
  sent: "Sent: a member's node stored it",
  delivered: "Delivered to everyone",
  read: "Read by everyone",
  failed: "Not delivered",
  none: "No one else is in this conversation yet",
};

export const MEMBER_STATE_LABEL = {
  pending: "waiting (offline or not reached yet)",
  sent: "on its way (a member's node has it)",
  delivered: "delivered",
  read: "read",
  failed: "not delivered",
};

/** Summary of a per-recipient status map: the slowest non-failed state. */
export function summarize(status) {
  const states = Object.values(status || {});
  const live = states.filter((s) => STATES.includes(s));
  if (live.length === 0) {
    return states.length ? "failed" : "none";
  }
  let lowest = STATES.length - 1;
  for (const state of live) {
    lowest = Math.min(lowest, STATES.indexOf(state));
  }
  return STATES[lowest];
}

/** Split a 60-digit safety number into 12 blocks of 5, as Signal shows it. */
export function safetyBlocks(number) {
  const digits = String(number || "").replace(/\D/g, "");
  const blocks = [];
  for (let i = 0; i < digits.length; i += 5) {
    blocks.push(digits.slice(i, i + 5));
  }
  return blocks;
}

/** A stable hue per user id, for avatars and sender names. */
export function hueOf(text) {
  let hash = 0;
  for (const ch of String(text || "")) {
    hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  }
  return hash % 360;
}

/** Pull a parley:invite/... link out of whatever was pasted (a web+parley: link, a
 *  /join?invite= address, text around it). Returns "" if there is none. */
export function extractInvite(text) {
  let value = String(text || "").trim();
  if (!value) {
    return "";
  }
  try {
    const url = new URL(value);
    if ((url.protocol === "http:" || url.protocol === "https:") && url.searchParams.get("invite")) {
      value = url.searchParams.get("invite");
    }
  } catch {
    // not a URL: fine
  }
  if (value.includes("%3A") || value.includes("%2F")) {
    try {
      value = decodeURIComponent(value);
    } catch {
      // leave it as it is
    }
  }
  const match = /parley:invite\/[A-Za-z0-9_-]+/.exec(value);
  return match ? match[0] : value;
}

const FILE_KINDS = {
  "application/pdf": "PDF document",
  "application/zip": "ZIP archive",
  "application/gzip": "Gzip archive",
  "application/x-gzip": "Gzip archive",
  "application/x-tar": "Tar archive",
  "application/x-7z-compressed": "7-Zip archive",
  "application/json": "JSON file",
  "text/plain": "Text file",
  "text/csv": "Spreadsheet (CSV)",
  "image/svg+xml": "SVG image",
};

/** A short kind for a file card ("PDF document", "ZIP archive", "TXT file"): raw MIME
 *  types such as application/octet-stream mean nothing to people and are long. */
export function fileKind(mime, name) {
  const type = String(mime || "").split(";")[0].trim().toLowerCase();
  if (FILE_KINDS[type]) {
    return FILE_KINDS[type];
  }
  const ext = /\.([A-Za-z0-9]{1,8})$/.exec(String(name || ""));
  if (ext) {
    return `${ext[1].toUpperCase()} file`;
  }
  const top = type.split("/")[0];
  return { image: "Image", video: "Video", audio: "Audio", text: "Text file" }[top] || "File";
}
