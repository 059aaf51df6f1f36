// How people and conversations are named on screen. A person is the nickname we gave
// them, else the name they chose (their profile, GET /profiles), else their 15-digit ID
// grouped for reading; you are "You". Names are not unique: a person whose name reads
// like someone else's is marked (`lookalikeOf`), and the ID stays one tap away.
import { groupDigits } from "./format.js";
import { state } from "./store.js";

function profileOf(userId) {
  return state.profiles.people[userId] || null;
}

/** The name we show for someone (without "You"). */
export function shownName(userId) {
  if (state.me && userId === state.me.id) {
    return state.profiles.me.name || groupDigits(userId);
  }
  const p = profileOf(userId);
  return (p && (p.nickname || p.name)) || groupDigits(userId);
}

export function personName(userId) {
  if (state.me && userId === state.me.id) {
    return "You";
  }
  return shownName(userId);
}

/** Whether we show a name (not just the ID) for someone. */
export function hasName(userId) {
  return shownName(userId) !== groupDigits(userId);
}

/** The user whose name this person's name imitates (or null). */
export function lookalikeOf(userId) {
  const p = profileOf(userId);
  return (p && p.lookalike) || null;
}

/** A sentence for the mark on a lookalike name. */
export function lookalikeWarning(userId) {
  const other = lookalikeOf(userId);
  if (!other) {
    return "";
  }
  const whom = state.me && other === state.me.id ? "yours" : `that of ${shownName(other)} (${groupDigits(other)})`;
  return `${shownName(userId)} (${groupDigits(userId)}) has a name like ${whom}: check the ID before you trust it.`;
}

/** Avatar picture URL of someone, or "" (the version in the query busts the cache). */
export function avatarUrl(userId) {
  const version = state.me && userId === state.me.id ? state.profiles.me.avatar
    : (profileOf(userId) || {}).avatar;
  return version ? `/api/v1/profiles/${userId}/avatar?v=${version}` : "";
}

export function conversationName(conv) {
  if (!conv) {
    return "";
  }
  if (conv.kind === "direct") {
    return shownName(conv.peer);
  }
  return conv.name || "Unnamed group";
}

export function conversationPath(conv) {
  return conv.kind === "direct" ? `/c/${conv.peer}` : `/g/${conv.id}`;
}

export function messagePreview(message) {
  if (!message) {
    return "No messages yet";
  }
  const who = state.me && message.sender === state.me.id ? "You: " : "";
  if (message.deleted) {
    return `${who}Message deleted`;
  }
  if (message.attachment) {
    const mime = String(message.attachment.mime || "");
    const kind = mime.startsWith("image/") ? "Photo" : mime.startsWith("video/") ? "Video" : "File";
    const name = message.attachment.name || "file";
    return `${who}${kind}: ${name}${message.text ? ` — ${message.text}` : ""}`;
  }
  return who + (message.text || "");
}
