// How people and conversations are named on screen. Parley has no display names: a
// person is their 15-digit ID (grouped for reading), you are "You".
import { groupDigits } from "./format.js";
import { state } from "./store.js";

export function personName(userId) {
  if (state.me && userId === state.me.id) {
    return "You";
  }
  return groupDigits(userId);
}

export function conversationName(conv) {
  if (!conv) {
    return "";
  }
  if (conv.kind === "direct") {
    return groupDigits(conv.peer);
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
