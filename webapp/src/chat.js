// Chat features: replies, reactions, edits, deletes for everyone, disappearing
// messages, mute, search and browser notifications (docs/api.md, "Chat features").
// The node applies the rules; these actions call it and show the Message it answers.
import { del, get, patch, post, put } from "./api.js";
import { personName } from "./names.js";
import { basePath, conversationById, state, upsertMessage } from "./store.js";

export const QUICK_REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

/** Choices of the disappearing-messages timer (seconds; 0: off). */
export const TIMERS = [
  [0, "Off"], [30, "30 seconds"], [300, "5 minutes"], [3600, "1 hour"], [86400, "1 day"],
  [604800, "1 week"], [2419200, "4 weeks"],
];

export function timerName(seconds) {
  const known = TIMERS.find(([s]) => s === seconds);
  return known ? known[1] : `${seconds} seconds`;
}

const path = (conv, messageId) => `${basePath(conv)}/messages/${messageId}`;

export async function react(conv, messageId, emoji) {
  upsertMessage(emoji ? await put(`${path(conv, messageId)}/reaction`, { emoji })
    : await del(`${path(conv, messageId)}/reaction`));
}

export async function editMessage(conv, messageId, text) {
  upsertMessage(await patch(path(conv, messageId), { text }));
}

export async function deleteMessage(conv, messageId) {
  upsertMessage(await del(path(conv, messageId)));
}

export async function sendReply(conv, text, replyTo) {
  return (await post(`${basePath(conv)}/messages`, { text, reply_to: replyTo })).message_id;
}

/** {timer} (every member) and/or {muted} (this node). */
export async function updateSettings(conv, body) {
  const reply = await post(`${basePath(conv)}/settings`, body);
  const shown = conversationById(conv.id);
  if (shown) {
    Object.assign(shown, reply);
  }
  return reply;
}

export function search(query) {
  return get(`/search?q=${encodeURIComponent(query)}&limit=50`);
}

/** A snippet "…the [lunch] plan…" as parts [{text, match}] (rendered as text, never HTML). */
export function snippetParts(snippet) {
  return (snippet || "").split(/(\[[^\]]*\])/).filter(Boolean).map((part) =>
    (part.startsWith("[") && part.endsWith("]") ? { text: part.slice(1, -1), match: true }
      : { text: part, match: false }));
}

// -- system lines for timer changes (GET …/messages "timer_changes", and live) -----

/** The conversation's timer changes as loaded with its messages. */
export function setTimerLines(conversation, changes) {
  state.timerLines[conversation] = [];
  for (const change of changes) {
    timerLine({ ...change, conversation });
  }
}

export function timerLine(data) {
  const who = state.me && data.by === state.me.id ? "You" : personName(data.by);
  const text = data.seconds ? `${who} set disappearing messages to ${timerName(data.seconds)}`
    : `${who} turned off disappearing messages`;
  const lines = state.timerLines[data.conversation] || (state.timerLines[data.conversation] = []);
  const key = `timer-${data.at}-${data.by}-${data.seconds}`;
  if (!lines.some((l) => l.key === key)) {
    lines.push({ key, at: data.at, text, kind: "timer" });
  }
}

// -- stored "safety number changed" lines (GET …/messages "safety_changes", and the
// identity_changed event, which carries the ones the node stored just then) ----------

/** Keep each change once, whichever of the load and the event brought it first. */
export function addSafetyChanges(changes) {
  for (const change of changes) {
    const list = state.safetyChanges[change.conversation]
      || (state.safetyChanges[change.conversation] = []);
    if (!list.some((c) => c.user === change.user && c.order === change.order)) {
      list.push(change);
    }
  }
}

// -- browser notifications (only when the tab is hidden, never for muted chats) ---

const NOTIFY_KEY = "parley-notifications";

export function notificationsOn() {
  return typeof Notification !== "undefined" && Notification.permission === "granted"
    && window.localStorage.getItem(NOTIFY_KEY) === "on";
}

/** Turn notifications on (asks the browser's permission) or off; returns the new state. */
export async function setNotifications(on) {
  if (!on) {
    window.localStorage.setItem(NOTIFY_KEY, "off");
    return false;
  }
  if (typeof Notification === "undefined") {
    return false;
  }
  const permission = Notification.permission === "granted" ? "granted"
    : await Notification.requestPermission();
  window.localStorage.setItem(NOTIFY_KEY, permission === "granted" ? "on" : "off");
  return permission === "granted";
}

const notified = new Set();

export function notifyMessage(message) {
  if (!notificationsOn() || document.visibilityState === "visible" || !state.me
      || message.sender === state.me.id || message.seen || notified.has(message.message_id)) {
    return;
  }
  const conv = conversationById(message.conversation);
  if (!conv || conv.muted) {
    return;
  }
  notified.add(message.message_id);
  const title = conv.kind === "group" ? `${personName(message.sender)} in ${conv.name}`
    : personName(message.sender);
  const body = message.text || (message.attachment ? message.attachment.name : "New message");
  new Notification(title, { body: body.slice(0, 140), tag: message.conversation });
}
