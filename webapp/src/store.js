// The app's state: one reactive object, loaded from the API and kept current by the
// events socket. Components read `state` and call the actions below; only this module
// and api.js talk to the node.

import { reactive } from "vue";
import {
  ApiError, MAX_FILE_BYTES, del, describeCode, describeError, get, post, request, upload,
} from "./api.js";
import { connectEvents } from "./events.js";
import { formatBytes } from "./format.js";
import { addSafetyChanges, notifyMessage, setTimerLines, timerLine } from "./chat.js";
import { personName } from "./names.js";
import { onPresence, onTyping } from "./presence.js";

/** localStorage key prefix: the welcome screen was shown for this identity. */
export const WELCOMED = "parley-welcomed:";

export const state = reactive({
  me: null,
  meError: "",
  conversations: [], // Conversation objects from GET /groups (groups and 1:1 chats)
  conversationsLoaded: false,
  messages: {}, // conversation id -> [Message] in display order
  groups: {}, // group id -> GET /groups/{id} answer
  uploads: {}, // conversation id -> [{key, name, size, loaded, error}]
  connection: "connecting", // connecting | live | offline
  identityChanged: {}, // user id -> when (ms) we learnt that a contact's safety number changed
  leftGroups: {}, // group id -> its name: we left or were removed (while this page was open)
  notices: [], // global notices [{key, text, kind}] shown in a live region
  activeConversation: null, // the conversation on screen (marks read while visible)
  olderCursor: {}, // conversation id -> cursor of the page before the loaded messages, or null
  timerLines: {}, // conversation id -> [{key, at, text, kind}] timer changes seen live
  safetyChanges: {}, // conversation id -> [SafetyChange] stored by the node (docs/api.md)
  // GET /profiles: our profile and everyone's names {name, nickname, avatar, lookalike}
  profiles: { me: { name: null, avatar: null }, people: {} },
});

let noticeKey = 0;

/** Show a message to the user (never only in the console). The same text is shown
 *  once: an event that comes again (two members refusing one join) adds no twin. */
export function notify(text, kind = "error", timeout = 0) {
  const shown = state.notices.find((n) => n.text === text && n.kind === kind);
  if (shown) {
    return shown.key;
  }
  const key = ++noticeKey;
  state.notices.push({ key, text, kind });
  if (timeout > 0) {
    window.setTimeout(() => dismiss(key), timeout);
  }
  return key;
}

export function dismiss(key) {
  const i = state.notices.findIndex((n) => n.key === key);
  if (i >= 0) {
    state.notices.splice(i, 1);
  }
}

// -- loading ---------------------------------------------------------------------------

export async function loadMe() {
  try {
    state.me = await get("/me");
    state.meError = "";
  } catch (err) {
    state.meError = describeError(err);
  }
}

export async function loadProfiles() {
  state.profiles = await get("/profiles");
}

let profilesTimer = null;

function refreshProfilesSoon() {
  if (profilesTimer === null) {
    profilesTimer = window.setTimeout(() => {
      profilesTimer = null;
      loadProfiles().catch(() => {});
    }, 100);
  }
}

/** Our display name and avatar (base64 of a picture of at most 32 KB, or null). */
export async function saveProfile(name, avatar) {
  state.profiles.me = await request("PUT", "/profile", { name, avatar });
  refreshProfilesSoon();
}

/** Our own name for someone, never shared; "" removes it. */
export async function setNickname(userId, nickname) {
  const reply = await request("PUT", `/nicknames/${userId}`, { nickname });
  await loadProfiles();
  return reply.nickname;
}

export async function loadConversations() {
  const reply = await get("/groups");
  state.conversations = reply.groups || [];
  // Groups we are out of, by name: the node's list, and those we left in this page.
  state.leftGroups = Object.fromEntries((reply.left_groups || []).map((g) => [g.id, g.name]));
  state.conversationsLoaded = true;
  if (state.activeConversation) {
    // The list may have been counted before our last read receipt was stored (a file
    // arriving keeps the node busy): the conversation on screen has nothing unread.
    scheduleRead();
  }
}

let conversationsTimer = null;

/** Many events in a burst cause one reload of the list. */
function refreshConversationsSoon() {
  if (conversationsTimer === null) {
    conversationsTimer = window.setTimeout(() => {
      conversationsTimer = null;
      loadConversations().catch(() => {});
    }, 120);
  }
}

export function conversationById(id) {
  return state.conversations.find((c) => c.id === id) || null;
}

export function directConversation(userId) {
  return state.conversations.find((c) => c.kind === "direct" && c.peer === userId) || null;
}

/** API paths of a conversation: groups by id, 1:1 chats by the other user's id. */
export function basePath(conv) {
  return conv.kind === "direct" ? `/chats/${conv.peer}` : `/groups/${conv.id}`;
}

export async function loadMessages(conv) {
  const reply = await get(`${basePath(conv)}/messages`);
  state.messages[conv.id] = sortMessages(reply.messages || []);
  state.olderCursor[conv.id] = reply.before || null;
  setTimerLines(conv.id, reply.timer_changes || []);
  state.safetyChanges[conv.id] = [];
  addSafetyChanges(reply.safety_changes || []);
}

/** The page before the loaded messages (GET …/messages?before=cursor, docs/api.md). */
export async function loadEarlier(conv) {
  const cursor = state.olderCursor[conv.id];
  if (!cursor) {
    return 0;
  }
  const reply = await get(`${basePath(conv)}/messages?before=${encodeURIComponent(cursor)}`);
  const known = new Set((state.messages[conv.id] || []).map((m) => m.message_id));
  const older = (reply.messages || []).filter((m) => !known.has(m.message_id));
  state.messages[conv.id] = sortMessages([...older, ...(state.messages[conv.id] || [])]);
  state.olderCursor[conv.id] = reply.before || null;
  return older.length;
}

export async function loadGroup(groupId) {
  const info = await get(`/groups/${groupId}`);
  state.groups[groupId] = info;
  return info;
}

function sortMessages(list) {
  // The node's display order: lamport, then sender, then per-sender sequence (which
  // follows arrival for one sender, so a stable sort keeps it).
  return list
    .map((m, i) => [m, i])
    .sort(([a, i], [b, j]) =>
      a.lamport !== b.lamport ? a.lamport - b.lamport : a.sender < b.sender ? -1 : a.sender > b.sender ? 1 : i - j)
    .map(([m]) => m);
}

// -- events ----------------------------------------------------------------------------

/** Show a Message (new, or changed: reactions, edit, deleted). */
export function upsertMessage(message) {
  const list = state.messages[message.conversation];
  if (!list) {
    return; // not loaded: it will be fetched when the conversation opens
  }
  const i = list.findIndex((m) => m.message_id === message.message_id);
  if (i >= 0) {
    list[i] = message;
  } else {
    state.messages[message.conversation] = sortMessages([...list, message]);
  }
}

function findMessage(conversation, messageId) {
  const list = state.messages[conversation] || [];
  return list.find((m) => m.message_id === messageId) || null;
}

function applyAttachment(data) {
  // {message_id?, conversation?, attachment: {...}} or the attachment itself.
  const att = data && data.attachment ? data.attachment : data;
  if (!att || !att.id) {
    return;
  }
  for (const [conversation, list] of Object.entries(state.messages)) {
    if (data.conversation && data.conversation !== conversation) {
      continue;
    }
    for (const message of list) {
      if ((data.message_id && message.message_id === data.message_id) ||
          (message.attachment && message.attachment.id === att.id)) {
        message.attachment = { ...(message.attachment || {}), ...att };
      }
    }
  }
}

function onEvent(event) {
  const data = event.data || {};
  switch (event.type) {
    case "ready":
      reloadAll();
      break;
    case "message":
      notifyMessage(data);
      upsertMessage(data);
      refreshConversationsSoon();
      if (state.activeConversation === data.conversation) {
        scheduleRead();
      }
      break;
    case "message_changed":
      upsertMessage(data);
      break;
    case "message_removed": {
      const list = state.messages[data.conversation];
      if (list) {
        state.messages[data.conversation] = list.filter((m) => m.message_id !== data.message_id);
      }
      refreshConversationsSoon();
      break;
    }
    case "timer":
      timerLine(data);
      refreshConversationsSoon();
      break;
    case "delivery": {
      const message = findMessage(data.conversation, data.message_id);
      if (message) {
        message.status = data.status || {};
      }
      break;
    }
    case "attachment":
      applyAttachment(data);
      break;
    case "group": {
      refreshConversationsSoon();
      if (data.event === "left") {
        // We left, or an admin removed us: the node no longer answers for this group.
        const conv = conversationById(data.group_id);
        const known = state.groups[data.group_id];
        delete state.groups[data.group_id];
        state.leftGroups[data.group_id] = (conv && conv.name) || (known && known.name) || "";
        if (known || conv) {
          notify(`You are no longer a member of “${(conv && conv.name) || "the group"}”.`, "info", 8000);
        }
      } else {
        delete state.leftGroups[data.group_id];
        if (state.groups[data.group_id]) {
          loadGroup(data.group_id).catch(() => {});
        }
        if (data.event === "joined" && joinsInFlight === 0) {
          // A join that was queued (the inviter was offline) went through later.
          notify("You joined a group: it is in your list now.", "info", 6000);
        }
      }
      break;
    }
    case "join_refused":
      // A join the user is waiting for on the join screen shows its error there, and
      // so do the other members' refusals of it that come in just after (an invite
      // names backups, and each answers).
      if (joinsInFlight === 0 && Date.now() - joinRefusedShownAt > LATE_REFUSALS_MS) {
        notify(`Joining the group was refused. ${describeCode(data.reason)}`);
      }
      break;
    case "identity_changed":
      state.identityChanged[data.user_id] = Date.now();
      addSafetyChanges(data.changes || []);
      notify(`The safety number of ${personName(data.user_id)} changed. Compare it with them before you trust new messages.`);
      break;
    case "profile":
      refreshProfilesSoon();
      break;
    case "typing":
      onTyping(data);
      break;
    case "presence":
      onPresence(data);
      break;
    default:
      break;
  }
}

async function reloadAll() {
  await Promise.all([
    loadMe(),
    loadProfiles().catch(() => {}),
    loadConversations().catch((err) => notify(describeError(err))),
    ...Object.keys(state.messages).map((id) => {
      const conv = conversationById(id);
      return conv ? loadMessages(conv).catch(() => {}) : Promise.resolve();
    }),
    ...Object.keys(state.groups).map((id) => loadGroup(id).catch((err) => {
      if (err.status === 404 || err.status === 403) {
        state.leftGroups[id] = state.groups[id].name || "";
        delete state.groups[id];
      }
    })),
  ]);
  if (state.activeConversation) {
    scheduleRead();
  }
}

let events = null;

export function start() {
  if (events === null) {
    events = connectEvents({
      onEvent,
      onState: (s) => {
        state.connection = s;
      },
    });
    reloadAll();
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.activeConversation) {
        scheduleRead();
      }
    });
  }
}

// -- read receipts -----------------------------------------------------------------------

let readTimer = null;

/** The user sees the conversation on screen: mark what others sent as read. */
export function scheduleRead() {
  if (readTimer !== null) {
    return;
  }
  readTimer = window.setTimeout(() => {
    readTimer = null;
    markRead().catch(() => {});
  }, 150);
}

async function markRead() {
  const id = state.activeConversation;
  if (!id || document.visibilityState !== "visible" || !state.me) {
    return;
  }
  if (id in state.leftGroups) {
    return; // the node keeps no conversation going for a group we are out of
  }
  const conv = conversationById(id);
  const list = state.messages[id] || [];
  const mine = (m) => m.sender === state.me.id;
  let last = -1;
  list.forEach((m, i) => {
    if (!m.seen && !mine(m)) {
      last = i;
    }
  });
  if (!conv) {
    return;
  }
  if (last >= 0) {
    await post(`${basePath(conv)}/read`, { message_id: list[last].message_id });
    // "This and every earlier message were seen" (docs/api.md).
    list.slice(0, last + 1).forEach((m) => {
      m.seen = true;
    });
  }
  // The list may have been reloaded meanwhile: count on the conversation shown now.
  const shown = conversationById(id);
  if (shown) {
    shown.unread = list.filter((m) => !m.seen && !mine(m)).length;
  }
}

// -- actions -----------------------------------------------------------------------------

export async function sendText(conv, text) {
  const reply = await post(`${basePath(conv)}/messages`, { text });
  return reply.message_id;
}

let uploadKey = 0;

/** Refuse files over 25 MB before any byte moves; the node enforces it too (413). */
export function checkFileSize(file) {
  if (file.size === 0) {
    const err = new ApiError(400, "empty_file", `“${file.name}” is empty: there is nothing to send.`);
    err.local = true;
    throw err;
  }
  if (file.size > MAX_FILE_BYTES) {
    const err = new ApiError(413, "file_too_large",
      `“${file.name}” is ${formatBytes(file.size)}: too large. Parley sends files of up to 25 MB.`);
    err.local = true;
    throw err;
  }
}

/** Where a conversation's uploads are listed (a 1:1 chat may not exist yet). */
export function uploadsKey(conv) {
  return conv.id || `direct:${conv.peer}`;
}

/** Upload one file (with an optional caption); progress shows in state.uploads. */
export async function sendFile(conv, file, text, replyTo = "") {
  checkFileSize(file);
  const entry = reactive({ key: ++uploadKey, name: file.name, size: file.size, loaded: 0, error: "" });
  const key = uploadsKey(conv);
  const list = state.uploads[key] || (state.uploads[key] = []);
  list.push(entry);
  const job = upload(`${basePath(conv)}/messages`, file, text, (loaded) => {
    entry.loaded = loaded;
  }, replyTo);
  entry.abort = job.abort;
  try {
    const reply = await job.promise;
    entry.loaded = file.size;
    removeUpload(key, entry.key);
    return reply && reply.message_id;
  } catch (err) {
    entry.error = describeError(err); // shown on the upload itself
    err.shown = true;
    throw err;
  }
}

export function removeUpload(listKey, key) {
  const list = state.uploads[listKey] || [];
  const i = list.findIndex((u) => u.key === key);
  if (i >= 0) {
    list.splice(i, 1);
  }
}

export async function createGroup(name) {
  const reply = await post("/groups", { name });
  await loadConversations();
  return reply.group_id;
}

export function makeInvite(groupId) {
  return post(`/groups/${groupId}/invites`, {});
}

let joinsInFlight = 0;
let joinRefusedShownAt = 0;
const LATE_REFUSALS_MS = 30000;

/** POST /join: {group_id, joined} (joined false: the inviter did not answer in time). */
export async function joinGroup(invite) {
  joinsInFlight += 1;
  try {
    const reply = await post("/join", { invite });
    await loadConversations().catch(() => {});
    return reply;
  } catch (err) {
    joinRefusedShownAt = Date.now(); // the join screen shows it
    throw err;
  } finally {
    joinsInFlight -= 1;
  }
}

export async function removeMember(groupId, userId) {
  await del(`/groups/${groupId}/members/${userId}`);
  if (state.me && userId === state.me.id) {
    const conv = conversationById(groupId);
    state.leftGroups[groupId] = (conv && conv.name) || "";
    delete state.groups[groupId];
    await loadConversations().catch(() => {});
  } else {
    await loadGroup(groupId);
  }
}

export async function promote(groupId, userId) {
  state.groups[groupId] = await post(`/groups/${groupId}/admins`, { id: userId });
}

export async function addContact(userId) {
  const contact = await post("/contacts", { id: userId });
  await loadConversations();
  return contact;
}

export function safety(userId) {
  return get(`/safety/${userId}`);
}

/** Mark (or unmark) the safety number verified, for exactly the key that was shown:
 *  the node refuses (403 key_mismatch) if the key changed meanwhile. */
export async function setVerified(userId, identityKey, verified) {
  const body = { identity_key: identityKey };
  const reply = verified
    ? await post(`/safety/${userId}/verified`, body)
    : await del(`/safety/${userId}/verified`, body);
  if (verified) {
    delete state.identityChanged[userId];
  }
  return reply;
}
