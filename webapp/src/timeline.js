// System lines of a chat: who joined, was removed, left or was promoted (from the
// group's signed membership log, GET /groups/{id} "events"), a changed safety number
// (stored by the node: GET …/messages "safety_changes"), and where a new member's
// visible history starts. They are placed among the messages by time: before the first
// message sent after them; a safety line by the ordering value the node gave it, before
// the first message with a higher one (so it stays where the node noticed the change).
import { personName } from "./names.js";

function subject(id, meId) {
  return id === meId ? "You" : personName(id);
}

function object(id, meId) {
  return id === meId ? "you" : personName(id);
}

/** The text of one membership event (docs/api.md, "Group events"). */
export function eventText(event, meId) {
  const by = subject(event.author, meId);
  switch (event.kind) {
    case "create":
      return `${by} created the group`;
    case "add":
      if (event.target === meId) {
        return "You joined the group. Messages sent before you joined are not shared with you.";
      }
      return `${subject(event.target, meId)} joined`;
    case "remove":
      return `${by} removed ${object(event.target, meId)}`;
    case "leave":
      return `${by} left`;
    case "promote":
      return `${by} made ${object(event.target, meId)} an admin`;
    default:
      return "";
  }
}

/** [{key, at (ms), text, kind}] for a group's events and the stored safety changes. */
export function systemLines(events, safetyChanges, meId) {
  const lines = (events || []).map((e) => ({
    key: `op-${e.epoch}`, at: e.at * 1000, text: eventText(e, meId), kind: e.kind,
    start: e.kind === "add" && e.target === meId,
  })).filter((l) => l.text);
  for (const change of safetyChanges || []) {
    lines.push({ key: `safety-${change.user}-${change.order}`, at: change.at, order: change.order,
      text: `The safety number of ${personName(change.user)} changed`, kind: "safety",
      userId: change.user });
  }
  return lines.sort((a, b) => a.at - b.at);
}

function before(line, message) {
  return line.order === undefined ? line.at <= message.sent_at : line.order <= message.lamport;
}

/** Messages and system lines in one list: [{type: "message"|"system", key, item}]. */
export function mergeTimeline(messages, lines) {
  const out = [];
  let next = 0;
  for (const m of messages) {
    while (next < lines.length && before(lines[next], m)) {
      out.push({ type: "system", key: lines[next].key, item: lines[next] });
      next += 1;
    }
    out.push({ type: "message", key: m.message_id, item: m });
  }
  for (; next < lines.length; next += 1) {
    out.push({ type: "system", key: lines[next].key, item: lines[next] });
  }
  return out;
}
