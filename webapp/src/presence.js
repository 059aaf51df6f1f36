// Typing indicators and presence (docs/api.md, "presence"): ephemeral, so they live
// here and not in the message store. The node pushes `typing` and `presence` events;
// a chat loads its members' state when it opens and refreshes it every 20 s.
import { reactive } from "vue";
import { get, post } from "./api.js";
import { formatTime } from "./format.js";

/** A typing indicator lasts this long without a repeat (the node's TYPING_TTL). */
const TYPING_TTL_MS = 6000;
/** While the user types, the node is told again this often (it passes on at most one every 2 s). */
const TYPING_REPEAT_MS = 2500;

export const presence = reactive({
  share: true,
  typing: {}, // conversation id -> {user id: until (ms)}
  people: {}, // user id -> {online, last_seen}
  now: Date.now(),
});

window.setInterval(() => {
  presence.now = Date.now();
}, 1000);

export function onTyping(data) {
  const list = presence.typing[data.conversation] || (presence.typing[data.conversation] = {});
  if (data.typing) {
    list[data.user_id] = Date.now() + TYPING_TTL_MS;
  } else {
    delete list[data.user_id];
  }
}

export function onPresence(data) {
  presence.people[data.user_id] = { online: data.online, last_seen: data.last_seen };
  if (!data.online) {
    for (const list of Object.values(presence.typing)) {
      delete list[data.user_id];
    }
  }
}

/** GET …/presence for a conversation (path: /groups/{id} or /chats/{id}). */
export async function loadPresence(conversationId, path) {
  const reply = await get(`${path}/presence`);
  presence.share = reply.share;
  const until = Date.now() + TYPING_TTL_MS;
  presence.typing[conversationId] = Object.fromEntries((reply.typing || []).map((id) => [id, until]));
  Object.assign(presence.people, reply.presence || {});
}

/** Who types in a conversation now (user ids). */
export function typingIn(conversationId) {
  const list = presence.typing[conversationId] || {};
  return Object.keys(list).filter((id) => list[id] > presence.now);
}

/** "online", "last seen 14:05" or "" (unknown, or not shared). */
export function presenceText(userId) {
  const p = presence.people[userId];
  if (!p || p.online === null || p.online === undefined) {
    return "";
  }
  if (p.online) {
    return "online";
  }
  return p.last_seen ? `last seen ${formatTime(p.last_seen)}` : "";
}

/** Tell the node our user types in the conversation at `path` (or stopped). Repeats
 *  are spaced; errors are not the user's business (the indicator is best effort). */
export function makeTypingNotifier(path) {
  let lastSent = 0;
  return (typing) => {
    const now = Date.now();
    if (typing && now - lastSent < TYPING_REPEAT_MS) {
      return;
    }
    if (!typing && lastSent === 0) {
      return;
    }
    lastSent = typing ? now : 0;
    post(`${path}/presence`, { typing }).catch(() => {});
  };
}

export async function loadSharing() {
  presence.share = (await get("/presence")).share;
}

export async function setSharing(share) {
  presence.share = (await post("/presence", { share })).share;
  if (!share) {
    presence.typing = {};
    presence.people = {};
  }
}
