// The agent console: the shared inbox in a browser, built on the public /v1 API and
// the live feed alone. No framework: a small state object, views drawn from it, and
// DOM built with textContent (never parsed as markup), so customer text cannot inject any.

import * as api from "./api.js";
import { connect } from "./feed.js";

const $ = (id) => document.getElementById(id);

// Script errors are kept where a test (or a curious admin) can read them.
window.consoleErrors = [];
window.addEventListener("error", (e) => window.consoleErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.consoleErrors.push(String(e.reason && e.reason.stack ? e.reason.stack : e.reason)));
const WINDOW_WARN_MS = 2 * 3600_000;
const ACTIVITY_EVERY_MS = 3000;

const state = {
  me: null,
  tab: "mine",
  convs: new Map(), // conversation id -> conversation, every tab's

  conversation: null, // the open conversation
  messages: new Map(), // wamid -> message, of the open conversation
  pending: new Map(), // command id -> pending reply shown at once
  older: null, // cursor to older messages
  contacts: new Map(), // wa_id -> display name
  agents: [],
  presence: new Map(), // agent -> online|away|offline
  viewers: new Map(), // agent -> last time seen viewing/typing the open conversation
  templates: null,
  stopFeed: null,
};

// For tests and debugging: what the console knows (no secrets: tokens live in api.js).
window.consoleState = state;

// ---------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function notice(text, kind = "error") {
  const box = $("notice");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
  clearTimeout(notice.timer);
  if (text) notice.timer = setTimeout(() => (box.hidden = true), 8000);
}

function time(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

/** How long the 24-hour window has left, or why it is closed. */
function windowLeft(c) {
  if (c.pending) return { open: false, text: "loading…" };
  if (!c.window_expires_at_ms) return { open: false, text: "no customer message yet: templates only" };
  const left = c.window_expires_at_ms - Date.now();
  if (left <= 0) return { open: false, text: "24 h window closed: templates only" };
  const h = Math.floor(left / 3600_000);
  const m = Math.floor((left % 3600_000) / 60_000);
  return { open: true, text: h ? `${h} h ${m} min left` : `${m} min left`, soon: left < WINDOW_WARN_MS };
}

function contactName(waId) {
  if (!waId) return "unknown";
  const known = state.contacts.get(waId);
  if (known) return known;
  state.contacts.set(waId, "+" + waId);
  api
    .get("/v1/contacts/" + encodeURIComponent(waId))
    .then((c) => {
      const name = c.full_name || c.profile_name;
      if (name) {
        state.contacts.set(waId, `${name} (+${waId})`);
        for (const node of document.querySelectorAll(`[data-contact="${CSS.escape(waId)}"]`)) node.textContent = state.contacts.get(waId);
      }
    })
    .catch(() => {});
  return state.contacts.get(waId);
}

function ownerName(c) {
  if (c.handled_by === "business_app") return "Business app";
  if (!c.assignee) return c.state === "resolved" ? "resolved" : "unassigned";
  if (state.me && c.assignee === state.me.agent_id) return "you";
  return c.assignee;
}

async function waitForResult(commandId, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      return await api.get("/v1/commands/" + encodeURIComponent(commandId));
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    await new Promise((r) => setTimeout(r, 400));
  }
  return null;
}

// ---------------------------------------------------------------- routing

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, arg] = hash.split("/");
  if (!api.loggedIn()) return showLogin();
  for (const view of document.querySelectorAll("[data-view]")) view.hidden = true;
  $("app").hidden = false;
  if (page === "admin") return showAdmin(arg || "agents");
  if (page === "devices") return showDevices();
  $("view-inbox").hidden = false;
  if (page === "c" && arg) openConversation(decodeURIComponent(arg));
  else closeConversation();
}

// ---------------------------------------------------------------- login

let challenge = null;

function showLogin() {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-step-code").hidden = !challenge;
  $("login-contact").focus();
}

async function sendCode(ev) {
  ev.preventDefault();
  const value = $("login-contact").value.trim();
  const org = $("login-org").value.trim();
  const contact = value.includes("@") ? { email: value } : { phone: value };
  if (org) contact.org = org;
  try {
    challenge = await api.requestCode(contact);
    $("login-step-code").hidden = false;
    $("login-hint").textContent = "A code was sent on WhatsApp. It is valid for a few minutes.";
    $("login-code").focus();
  } catch (err) {
    $("login-hint").textContent = err.message;
  }
}

async function verify(ev) {
  ev.preventDefault();
  try {
    await api.verifyCode(challenge, $("login-code").value.trim());
    challenge = null;
    $("login").hidden = true;
    $("login-form").reset();
    await start();
    const next = new URLSearchParams(location.search).get("next");
    if (next === "/dashboards") location.href = "/dashboards";
  } catch (err) {
    $("login-hint").textContent = err.message;
  }
}

// ---------------------------------------------------------------- start

async function start() {
  state.me = await api.get("/v1/me");
  $("whoami").textContent = `${state.me.name || state.me.agent_id} · ${state.me.org}`;
  document.body.dataset.role = state.me.role;
  for (const node of document.querySelectorAll("[data-admin]")) node.hidden = state.me.role !== "admin";
  api.get("/v1/agents").then((r) => (state.agents = r.items || r.agents || r)).catch(() => {});
  if (state.stopFeed) state.stopFeed();
  // The API says this device is offline when its feed ends (a browser has no MQTT
  // last will): so after a reconnect the switch is said again.
  let reconnect = false;
  const onReady = () => {
    fillGap();
    if (reconnect) setPresence($("presence").value || "online");
    reconnect = true;
  };
  state.stopFeed = connect({ onReady, onEvent: onFeed, onState: (s) => ($("live").dataset.state = s, ($("live").textContent = s === "live" ? "live" : "reconnecting…")) });
  route();
  setPresence("online");
}

// ---------------------------------------------------------------- inbox

// Tabs are views of one map of the conversations this agent knows, so a change seen
// once shows in every tab it belongs to.
const TABS = {
  mine: (c) => c.state === "assigned" && c.assignee === state.me.agent_id,
  queue: (c) => c.state === "open",
  business_app: (c) => c.handled_by === "business_app",
  all: () => true,
};

function tabItems(tab) {
  return [...state.convs.values()]
    .filter(TABS[tab])
    .sort((a, b) => (b.last_message_at_ms || 0) - (a.last_message_at_ms || 0));
}

async function page(path) {
  try {
    return (await api.get(path)).items;
  } catch (err) {
    if (err.status !== 401) notice(err.message);
    return null;
  }
}

/** Everything the tabs show, read afresh (at start and after every reconnect). */
async function loadTabs() {
  const reads = [
    "/v1/conversations?assignee=me&state=assigned&limit=200",
    "/v1/conversations?state=open&limit=200",
    "/v1/conversations?assignee=business_app&state=assigned&limit=200",
    "/v1/conversations?limit=200",
  ];
  const pages = await Promise.all(reads.map(page));
  if (pages.some((p) => p === null)) return;
  state.convs = new Map(pages.flat().map((c) => [c.conversation_id, corrected(c)]));
  drawTabs();
  drawList();
}

/** After an event: the most recent conversations, and (when it was about this agent)
 * everything assigned to them, merged into what is known. */
async function loadRecent(mine) {
  const recent = await page("/v1/conversations?limit=50");
  if (recent) for (const c of recent) state.convs.set(c.conversation_id, corrected(c));
  if (mine) {
    const assigned = await page("/v1/conversations?assignee=me&state=assigned&limit=200");
    if (assigned) {
      const now = new Set(assigned.map((c) => c.conversation_id));
      for (const c of state.convs.values()) {
        if (TABS.mine(c) && !now.has(c.conversation_id) && !expected.convs.has(c.conversation_id)) state.convs.delete(c.conversation_id);
      }
      for (const c of assigned) state.convs.set(c.conversation_id, corrected(c));
    }
  }
  drawTabs();
  drawList();
}

function drawTabs() {
  for (const button of document.querySelectorAll("[data-tab]")) {
    const tab = button.dataset.tab;
    const items = state.me ? tabItems(tab) : [];
    const unread = items.reduce((n, c) => n + (c.unread_count || 0), 0);
    button.setAttribute("aria-selected", String(tab === state.tab));
    button.querySelector(".count").textContent = unread ? String(unread) : "";
    button.querySelector(".count").setAttribute("aria-label", `${unread} unread`);
  }
}

function drawList() {
  const list = $("conversations");
  const items = state.me ? tabItems(state.tab) : [];
  list.replaceChildren(
    ...items.map((c) => {
      const w = windowLeft(c);
      const open = state.conversation && state.conversation.conversation_id === c.conversation_id;
      return el(
        "li",
        { "data-conversation": c.conversation_id, class: open ? "current" : "" },
        el(
          "a",
          { href: "#/c/" + encodeURIComponent(c.conversation_id), "aria-current": open ? "true" : null },
          el("span", { class: "who", "data-contact": c.contact_wa_id, text: contactName(c.contact_wa_id) }),
          el("time", { text: time(c.last_message_at_ms) }),
          el("span", { class: "preview", text: c.last_message_preview === null ? "message deleted" : c.last_message_preview || "" }),
          el("span", { class: "owner", text: ownerName(c) }),
          el("span", { class: "window" + (w.open ? (w.soon ? " soon" : "") : " closed"), text: w.open ? w.text : "window closed" }),
          c.unread_count ? el("span", { class: "unread", text: String(c.unread_count), "aria-label": `${c.unread_count} unread` }) : null,
        ),
      );
    }),
  );
  $("empty-list").hidden = items.length > 0;
}

async function search(ev) {
  ev.preventDefault();
  const q = $("search").value.trim();
  const out = $("search-results");
  if (!q) return out.replaceChildren();
  try {
    const page = await api.get("/v1/contacts?limit=20&q=" + encodeURIComponent(q));
    out.replaceChildren(
      ...page.items.map((c) =>
        el(
          "li",
          {},
          el("button", {
            type: "button",
            text: `${c.full_name || c.profile_name || ""} +${c.wa_id}`.trim(),
            onclick: async () => {
              const convs = await api.get(`/v1/contacts/${c.wa_id}/conversations`);
              const first = (convs.items || [])[0];
              if (first) location.hash = "#/c/" + encodeURIComponent(first.conversation_id);
              else notice("No conversation with this contact yet.", "info");
            },
          }),
        ),
      ),
    );
    if (!page.items.length) out.replaceChildren(el("li", { text: "No contact found." }));
  } catch (err) {
    notice(err.message);
  }
}

// ---------------------------------------------------------------- conversation

async function openConversation(id) {
  const same = state.conversation && state.conversation.conversation_id === id;
  $("conversation").hidden = false;
  document.body.dataset.open = "conversation";
  if (!same) {
    state.messages = new Map();
    state.pending = new Map();
    state.viewers = new Map();
    state.older = null;
  }
  try {
    state.conversation = corrected(await api.get("/v1/conversations/" + encodeURIComponent(id)));
  } catch (err) {
    // Known from the feed but not stored yet: show what is known; the refresh
    // below reads it once it is.
    const known = state.convs.get(id);
    if (err.status !== 404 || !known) {
      notice(err.message);
      return;
    }
    state.conversation = known;
  }
  drawHeader();
  await loadNewest().catch(() => {});
  refreshSoon();
  if (!same) {
    $("messages").scrollTop = $("messages").scrollHeight;
    activity("viewing", true);
    markRead();
  }
  drawList();
}

function closeConversation() {
  state.conversation = null;
  $("conversation").hidden = true;
  document.body.dataset.open = "list";
  drawList();
}

function drawHeader() {
  const c = state.conversation;
  $("conv-title").textContent = contactName(c.contact_wa_id);
  $("conv-title").dataset.contact = c.contact_wa_id;
  $("conv-owner").textContent = "Owner: " + ownerName(c);
  const w = windowLeft(c);
  $("conv-window").textContent = w.text;
  $("conv-window").className = w.open ? (w.soon ? "soon" : "") : "closed";
  const mine = state.me && c.assignee === state.me.agent_id;
  $("act-claim").hidden = mine || c.state === "resolved";
  $("act-resolve").hidden = c.state === "resolved";
  $("act-reopen").hidden = c.state !== "resolved";
  // Free text only inside the window; outside it, the reason and the template picker.
  $("composer-text").disabled = !w.open;
  $("composer-send").disabled = !w.open;
  $("composer-media").disabled = !w.open;
  $("composer-reason").textContent = w.open ? "" : w.text;
  $("composer-reason").hidden = w.open;
  $("transfer-to").replaceChildren(
    el("option", { value: "", text: "the queue" }),
    ...state.agents
      .filter((a) => a.active !== false && a.agent_id !== c.assignee)
      .map((a) => el("option", { value: a.agent_id, text: a.name || a.agent_id })),
  );
  drawViewers();
}

async function loadNewest() {
  const c = state.conversation;
  const page = await api.get(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/messages?limit=50`);
  if (state.older === null) state.older = page.next || "";
  merge(page.items);
}

async function loadOlder() {
  if (!state.older || loadOlder.busy) return;
  loadOlder.busy = true;
  const box = $("messages");
  const before = box.scrollHeight;
  try {
    const c = state.conversation;
    const page = await api.get(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/messages?limit=50&cursor=${encodeURIComponent(state.older)}`);
    state.older = page.next || "";
    merge(page.items);
    box.scrollTop = box.scrollHeight - before;
  } finally {
    loadOlder.busy = false;
  }
}

/** Merges messages by id (so one seen twice shows once) and redraws in time order. */
function merge(items) {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  for (const m of items) state.messages.set(m.wamid, m);
  drawMessages();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

const TICKS = { accepted: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

function drawMessages() {
  const all = [...state.messages.values()].sort((a, b) => (a.sent_at_ms || 0) - (b.sent_at_ms || 0) || a.wamid.localeCompare(b.wamid));
  const byId = state.messages;
  const nodes = all.map((m) => {
    const note = m.message_type === "note" || m.direction === "internal";
    const out = m.direction === "outbound";
    const deleted = !!m.deleted_at_ms;
    const classes = ["msg", note ? "note" : out ? "out" : "in", deleted ? "deleted" : ""].join(" ");
    const quoted = m.reply_to ? byId.get(m.reply_to) : null;
    return el(
      "li",
      { class: classes, "data-wamid": m.wamid, "data-status": m.status || "" },
      m.reply_to ? el("blockquote", { text: quoted ? quoted.preview || `[${quoted.message_type}]` : "a earlier message" }) : null,
      note ? el("span", { class: "label", text: `Note by ${m.sent_by || "?"} (colleagues only)` }) : null,
      deleted ? el("p", { class: "body", text: "This message was deleted." }) : body(m),
      m.reactions && m.reactions.length ? el("p", { class: "reactions", "aria-label": "reactions" }, m.reactions.map((r) => el("span", { title: r.reactor, text: r.emoji }))) : null,
      el(
        "p",
        { class: "meta" },
        m.sent_by && out ? el("span", { text: m.sent_by === (state.me && state.me.agent_id) ? "you" : m.sent_by }) : m.origin === "business_app" ? el("span", { text: "Business app" }) : null,
        el("time", { text: time(m.sent_at_ms) }),
        m.edited_at_ms && !deleted ? el("span", { class: "edited", text: "edited" }) : null,
        out && m.status
          ? el("span", {
              class: "tick " + m.status,
              "aria-label": m.status,
              title: m.status === "failed" ? failure(m) : m.status,
              text: TICKS[m.status] || m.status,
            })
          : null,
        out && m.status === "failed" ? el("span", { class: "failure", text: failure(m) }) : null,
      ),
    );
  });
  for (const p of state.pending.values()) {
    nodes.push(el("li", { class: "msg out pending", "data-pending": p.id }, el("p", { class: "body", text: p.text }), el("p", { class: "meta" }, el("span", { class: "tick", "aria-label": "pending", text: "🕓" }))));
  }
  $("messages").replaceChildren(...nodes);
  $("older").hidden = !state.older;
}

function failure(m) {
  const e = Array.isArray(m.errors) ? m.errors[0] : m.errors;
  if (!e) return "failed";
  return `failed: ${e.title || e.message || ""} (${e.code || "?"})`;
}

function body(m) {
  const p = el("div", { class: "body" });
  if (m.media && m.media.id) {
    const mediaId = m.media.id;
    const isImage = (m.media.mime_type || "").startsWith("image/") || m.message_type === "image" || m.message_type === "sticker";
    const slot = el("div", { class: "media" }, el("button", { type: "button", text: isImage ? "Show image" : `Download ${m.media.filename || m.message_type}` }));
    slot.firstChild.addEventListener("click", async () => {
      try {
        const link = await api.get("/v1/media/" + encodeURIComponent(mediaId));
        if (isImage) slot.replaceChildren(el("img", { src: link.url, alt: m.preview || "image from the customer" }));
        else window.open(link.url, "_blank", "noopener");
      } catch (err) {
        notice(err.status === 404 ? "This media is not stored (yet)." : err.message);
      }
    });
    p.append(slot);
  }
  const text = m.preview && !(m.media && m.preview === `[${m.message_type}]`) ? m.preview : "";
  if (text) p.append(el("p", { text }));
  return p;
}

async function markRead() {
  const c = state.conversation;
  const last = [...state.messages.values()].filter((m) => m.direction === "inbound").sort((a, b) => b.sent_at_ms - a.sent_at_ms)[0];
  if (!c || !last || c.assignee !== (state.me && state.me.agent_id)) return;
  api.post(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/read`, { message_id: last.wamid }).catch(() => {});
}

// ---------------------------------------------------------------- acting

async function send(payload, pendingText) {
  const c = state.conversation;
  try {
    const { command_id } = await api.post(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/messages`, payload);
    state.pending.set(command_id, { id: command_id, text: pendingText });
    drawMessages();
    $("messages").scrollTop = $("messages").scrollHeight;
    const result = await waitForResult(command_id);
    state.pending.delete(command_id);
    if (result && !result.accepted) notice("Not sent: " + (result.reason || "refused"));
    await loadNewest();
  } catch (err) {
    notice(err.message);
  }
}

async function sendText(ev) {
  ev.preventDefault();
  const text = $("composer-text").value;
  if (!text.trim()) return;
  $("composer-text").value = "";
  await send({ type: "text", body: text }, text);
}

async function sendMedia() {
  const file = $("composer-media").files[0];
  if (!file) return;
  $("composer-media").value = "";
  try {
    const upload = await api.post("/v1/media" + "?filename=" + encodeURIComponent(file.name), file);
    const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("video/") ? "video" : file.type.startsWith("audio/") ? "audio" : "document";
    await send({ type: "media", kind, s3_key: upload.s3_key, filename: kind === "document" ? file.name : undefined }, `[${kind}] ${file.name}`);
  } catch (err) {
    notice(err.message);
  }
}

async function openTemplates() {
  const c = state.conversation;
  const picker = $("templates");
  picker.hidden = !picker.hidden;
  if (picker.hidden) return;
  try {
    const r = await api.get("/v1/templates?phone_number_id=" + encodeURIComponent(c.phone_number_id));
    state.templates = r.templates || [];
    $("template-select").replaceChildren(
      el("option", { value: "", text: "Choose a template" }),
      ...state.templates.map((t, i) => el("option", { value: String(i), text: `${t.name} (${t.language})` })),
    );
    drawTemplateParams();
    $("template-select").focus();
  } catch (err) {
    notice(err.message);
  }
}

function templateBody(t) {
  const body = (t.components || []).find((c) => (c.type || "").toUpperCase() === "BODY");
  return body ? body.text || "" : "";
}

function drawTemplateParams() {
  const t = state.templates[Number($("template-select").value)];
  const box = $("template-params");
  if (!t || $("template-select").value === "") return box.replaceChildren();
  const count = (t.parameters || []).reduce((n, p) => n + (p.count || 0), 0) || (templateBody(t).match(/\{\{\d+\}\}/g) || []).length;
  box.replaceChildren(
    el("p", { class: "template-preview", text: templateBody(t) }),
    ...Array.from({ length: count }, (_, i) =>
      el("label", {}, `Parameter {{${i + 1}}}`, el("input", { class: "template-param", required: true, "aria-label": `Parameter ${i + 1}` })),
    ),
  );
}

async function sendTemplate(ev) {
  ev.preventDefault();
  const t = state.templates[Number($("template-select").value)];
  if (!t) return;
  const params = [...document.querySelectorAll(".template-param")].map((i) => ({ type: "text", text: i.value }));
  const payload = { type: "template", name: t.name, language: t.language };
  if (params.length) payload.components = [{ type: "body", parameters: params }];
  let text = templateBody(t);
  params.forEach((p, i) => (text = text.replace(`{{${i + 1}}}`, p.text)));
  $("templates").hidden = true;
  await send(payload, text || t.name);
}

async function command(body) {
  const c = state.conversation;
  try {
    const { command_id } = await api.post(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/commands`, body);
    const result = await waitForResult(command_id);
    if (!result) notice("No answer from the router yet; it will apply when it can.", "info");
    else if (!result.accepted) notice("Refused: " + (result.reason || "no reason given"));
    else notice(`Done: ${body.action.replace("_", " ")}.`, "info");
    await Promise.all([openConversation(c.conversation_id), loadTabs()]);
  } catch (err) {
    notice(err.message);
  }
}

// ---------------------------------------------------------------- presence and activity

async function setPresence(status) {
  $("presence").value = status;
  try {
    await api.call("PUT", "/v1/me/presence", { status });
  } catch (err) {
    if (err.status !== 404) notice(err.message);
  }
}

const lastActivity = new Map();
function activity(kind, force = false) {
  const c = state.conversation;
  if (!c) return;
  const key = kind + c.conversation_id;
  const now = Date.now();
  if (!force && now - (lastActivity.get(key) || 0) < ACTIVITY_EVERY_MS) return;
  lastActivity.set(key, now);
  api.post(`/v1/conversations/${encodeURIComponent(c.conversation_id)}/activity`, { kind }).catch(() => {});
}

function drawViewers() {
  const now = Date.now();
  const names = [...state.viewers.entries()]
    .filter(([agent, v]) => now - v.at < 30_000 && agent !== (state.me && state.me.agent_id))
    .map(([agent, v]) => `${agent} is ${v.kind === "typing" ? "typing" : "viewing"}`);
  $("viewers").textContent = names.join(", ");
}

// ---------------------------------------------------------------- live feed

// The feed says what changed; the stores the REST API reads may not have it yet (the
// MQTT sink is often faster than the mongo sink). So an event becomes an expectation
// ("conversation X is assigned to ann", "message M is there", "M is read"): an
// assignment shows at once, and what the console reads is re-read, with backoff,
// until it agrees with every expectation (or 60 s pass). Reads never undo an event.
const expected = {
  convs: new Map(), // conversation id -> { state, assignee, until }
  messages: new Map(), // wamid -> { rank, until } (the open conversation's)
};
const RANK = { accepted: 1, sent: 2, delivered: 3, read: 4, failed: 5 };
let refreshing = false;

function handledBy(state, assignee) {
  if (state !== "assigned" || !assignee) return "nobody";
  return assignee === "business_app" ? "business_app" : "agent";
}

/** A conversation as read, corrected by what an event already said about it. */
function corrected(c) {
  const e = expected.convs.get(c.conversation_id);
  if (!e) return c;
  if (c.state === e.state && (c.assignee || null) === e.assignee) {
    expected.convs.delete(c.conversation_id);
    return c;
  }
  return { ...c, state: e.state, assignee: e.assignee, handled_by: handledBy(e.state, e.assignee) };
}

function unmet() {
  const now = Date.now();
  for (const [k, e] of expected.convs) if (e.until < now) expected.convs.delete(k);
  for (const [k, e] of expected.messages) if (e.until < now) expected.messages.delete(k);
  for (const [wamid, e] of expected.messages) {
    const m = state.messages.get(wamid);
    if (m && (RANK[m.status] || 0) >= e.rank) expected.messages.delete(wamid);
  }
  // A conversation that just came in may be read while still queued: the router
  // decides in milliseconds, but the store may show "open" a moment longer.
  const fresh = [...state.convs.values()].filter((c) => c.state === "open" && now - (c.last_message_at_ms || 0) < 10_000).length;
  // The open conversation's newest message is not loaded yet (stored a moment later).
  const c = state.conversation;
  const newest = Math.max(0, ...[...state.messages.values()].map((m) => m.sent_at_ms || 0));
  const behind = c && c.last_message_at_ms > newest && now - c.last_message_at_ms < 60_000 ? 1 : 0;
  return expected.convs.size + expected.messages.size + fresh + behind;
}

async function refreshOnce() {
  const tasks = [loadRecent(expected.convs.size > 0)];
  if (state.conversation) {
    tasks.push(
      (async () => {
        const c = await api.get("/v1/conversations/" + encodeURIComponent(state.conversation.conversation_id));
        state.conversation = corrected(c);
        drawHeader();
        await loadNewest();
      })().catch(() => {}),
    );
  }
  await Promise.all(tasks);
}

/** Re-reads now, then while expectations are unmet, with backoff (at most 2 s). */
async function refreshSoon() {
  if (refreshing) {
    refreshSoon.again = true;
    return;
  }
  refreshing = true;
  try {
    let delay = 100;
    do {
      refreshSoon.again = false;
      await new Promise((r) => setTimeout(r, delay));
      await refreshOnce();
      delay = Math.min(delay * 2, 2000);
    } while (refreshSoon.again || unmet() > 0);
  } finally {
    refreshing = false;
  }
}

/** After (re)connecting: re-read everything shown; merging by id keeps it once. */
async function fillGap() {
  await loadTabs();
  refreshSoon();
}

function onFeed({ topic, payload }) {
  // The last topics seen, for tests and debugging (bounded).
  const log = (window.feedLog = window.feedLog || []);
  log.push(topic);
  if (log.length > 200) log.splice(0, log.length - 200);
  const parts = topic.split("/");
  const i = parts.indexOf("conversations");
  if (i >= 0 && parts[i + 2] === "activity") {
    const [id, agent] = [parts[i + 1], parts[i + 3]];
    if (state.conversation && state.conversation.conversation_id === id) {
      const kind = payload && payload.state === "typing" ? "typing" : "viewing";
      state.viewers.set(agent, { kind, at: Date.now() });
      drawViewers();
    }
    return;
  }
  if (parts.includes("presence")) return;
  const until = Date.now() + 60_000;
  const p = payload && typeof payload === "object" ? payload : {};
  if (p.conversation_id && p.state && !p.rejected && ["open", "assigned", "resolved"].includes(p.state)) {
    // An assignment: shown at once, and held until the store agrees.
    const e = { state: p.state, assignee: p.assignee || null, until };
    expected.convs.set(p.conversation_id, e);
    // Not read yet: what the event says is enough to list it (`{number}-{customer}`).
    const known = state.convs.get(p.conversation_id) || {
      conversation_id: p.conversation_id,
      phone_number_id: p.phone_number_id,
      contact_wa_id: p.conversation_id.split("-").pop(),
      unread_count: 0,
      last_message_at_ms: p.at_ms,
      last_message_preview: "",
      pending: true, // known from the feed only: the window is not known yet
    };
    state.convs.set(p.conversation_id, corrected(known));
    if (state.conversation && state.conversation.conversation_id === p.conversation_id) {
      state.conversation = corrected(state.conversation);
      drawHeader();
    }
    drawTabs();
    drawList();
  }
  const open = state.conversation && i >= 0 && parts[i + 1] === state.conversation.conversation_id;
  if (open && p.kind === "status" && p.wamid) expected.messages.set(p.wamid, { rank: RANK[p.status] || 0, until });
  else if (open && p.kind === "message" && p.id) expected.messages.set(p.id, { rank: 0, until });
  refreshSoon();
}

// ---------------------------------------------------------------- admin

async function showAdmin(page) {
  $("view-admin").hidden = false;
  for (const a of document.querySelectorAll("[data-admin-page]")) a.setAttribute("aria-current", a.dataset.adminPage === page ? "page" : "false");
  for (const s of document.querySelectorAll("[data-admin-section]")) s.hidden = s.dataset.adminSection !== page;
  try {
    if (page === "agents") await drawAgents();
    if (page === "numbers") await drawNumbers();
  } catch (err) {
    notice(err.message);
  }
}

async function drawAgents() {
  const r = await api.get("/v1/agents");
  state.agents = r.items || r.agents || r;
  $("agents").replaceChildren(
    ...state.agents.map((a) =>
      el(
        "tr",
        { "data-agent": a.agent_id },
        el("td", { text: a.name || a.agent_id }),
        el("td", { text: a.phone || a.email || "" }),
        el("td", { text: a.role || "agent" }),
        el("td", {}, el("input", { type: "number", min: "0", max: "1000", value: String(a.capacity ?? ""), "aria-label": `Capacity of ${a.agent_id}`, onchange: (ev) => patchAgent(a.agent_id, { capacity: Number(ev.target.value) }) })),
        el("td", { text: a.active ? "active" : "deactivated" }),
        el("td", {}, a.active ? el("button", { type: "button", text: "Deactivate", onclick: () => deactivate(a.agent_id) }) : null),
      ),
    ),
  );
}

async function patchAgent(id, patch) {
  try {
    await api.call("PATCH", "/v1/agents/" + encodeURIComponent(id), patch);
    notice("Saved.", "info");
  } catch (err) {
    notice(err.message);
  }
}

async function deactivate(id) {
  if (!confirm(`Deactivate ${id}? Their conversations go back to routing.`)) return;
  try {
    await api.call("DELETE", "/v1/agents/" + encodeURIComponent(id));
    await drawAgents();
  } catch (err) {
    notice(err.message);
  }
}

async function invite(ev) {
  ev.preventDefault();
  const contact = $("invite-contact").value.trim();
  const body = {
    agent_id: $("invite-id").value.trim(),
    name: $("invite-name").value.trim(),
    role: $("invite-role").value,
    capacity: Number($("invite-capacity").value),
  };
  if (contact.includes("@")) body.email = contact;
  else body.phone = contact;
  try {
    await api.post("/v1/agents", body);
    $("invite-form").reset();
    notice(`Invited ${body.agent_id}: they can log in with ${contact}.`, "info");
    // The invitation is a directory change: listed once the store has it.
    for (let i = 0; i < 40; i++) {
      await drawAgents();
      if (state.agents.some((a) => a.agent_id === body.agent_id)) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (err) {
    notice(err.message);
  }
}

async function drawNumbers() {
  const r = await api.get("/v1/business-numbers");
  const numbers = r.items || r.numbers || r;
  $("numbers").replaceChildren(
    ...numbers.map((n) =>
      el(
        "tr",
        { "data-number": n.phone_number_id },
        el("td", { text: n.display_phone_number || "" }),
        el("td", { text: n.phone_number_id }),
        el("td", { text: n.has_credentials ? "yes" : "no" }),
        el("td", {}, el("button", { type: "button", text: "Sync history", onclick: () => sync(n.phone_number_id) })),
        el("td", { class: "sync", id: "sync-" + n.phone_number_id }),
      ),
    ),
  );
  $("policy-number").replaceChildren(el("option", { value: "", text: "every number" }), ...numbers.map((n) => el("option", { value: n.phone_number_id, text: n.display_phone_number || n.phone_number_id })));
}

async function addNumber(ev) {
  ev.preventDefault();
  const id = $("number-id").value.trim();
  try {
    await api.call("PUT", "/v1/business-numbers/" + encodeURIComponent(id), {
      display_phone_number: $("number-display").value.trim(),
      waba_id: $("number-waba").value.trim() || undefined,
      access_token: $("number-token").value,
      app_secret: $("number-secret").value,
    });
    $("number-form").reset();
    notice("Number saved.", "info");
    await drawNumbers();
  } catch (err) {
    notice(err.message);
  }
}

async function sync(id) {
  const path = `/v1/business-numbers/${encodeURIComponent(id)}/sync`;
  try {
    await api.post(path, { kind: "history" });
    const cell = $("sync-" + id);
    for (let i = 0; i < 120 && cell.isConnected; i++) {
      const p = await api.get(path).catch(() => null);
      if (p) cell.textContent = p.error ? "failed" : `${p.status || "running"} ${p.progress ?? 0}%`;
      if (p && (p.finished_at_ms || p.error)) break;
      await new Promise((r) => setTimeout(r, 2000));
    }
  } catch (err) {
    notice(err.message);
  }
}

async function setPolicy(ev) {
  ev.preventDefault();
  const kind = $("policy-kind").value;
  // Sticky keeps a contact with the agent who last had them, for a week.
  const body = { policy: kind === "sticky" ? { kind, window_ms: 7 * 24 * 3600_000 } : { kind } };
  const number = $("policy-number").value;
  if (number) body.phone_number_id = number;
  try {
    await api.call("PUT", "/v1/routing-policy", body);
    notice("Routing policy saved.", "info");
  } catch (err) {
    notice(err.message);
  }
}

// ---------------------------------------------------------------- devices

async function showDevices() {
  $("view-devices").hidden = false;
  try {
    const r = await api.get("/v1/auth/sessions");
    const sessions = r.items || r.sessions || r;
    $("sessions").replaceChildren(
      ...sessions.map((s) =>
        el(
          "li",
          {},
          `${s.device_name || s.device_id}${s.current ? " (this browser)" : ""} · last used ${time(s.last_used_at_ms)} `,
          s.current
            ? null
            : el("button", {
                type: "button",
                text: "Log out this device",
                onclick: async () => {
                  await api.call("DELETE", "/v1/auth/sessions/" + encodeURIComponent(s.session_id));
                  showDevices();
                },
              }),
        ),
      ),
    );
  } catch (err) {
    notice(err.message);
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("login-form").addEventListener("submit", (ev) => (challenge ? verify(ev) : sendCode(ev)));
  $("login-resend").addEventListener("click", (ev) => {
    challenge = null;
    sendCode(ev);
  });
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => {
      state.tab = button.dataset.tab;
      drawTabs();
      drawList();
    });
  }
  $("search-form").addEventListener("submit", search);
  $("composer").addEventListener("submit", sendText);
  $("composer-text").addEventListener("input", () => activity("typing"));
  $("composer-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) $("composer").requestSubmit() || ev.preventDefault();
  });
  $("composer-media").addEventListener("change", sendMedia);
  $("open-templates").addEventListener("click", openTemplates);
  $("template-select").addEventListener("change", drawTemplateParams);
  $("template-form").addEventListener("submit", sendTemplate);
  $("act-claim").addEventListener("click", () => command({ action: "claim" }));
  $("act-resolve").addEventListener("click", () => command({ action: "resolve" }));
  $("act-reopen").addEventListener("click", () => command({ action: "reopen" }));
  $("transfer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const to = $("transfer-to").value;
    command(to ? { action: "transfer", to_agent: to } : { action: "transfer" });
  });
  $("note-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("note-text").value.trim();
    if (!text) return;
    $("note-text").value = "";
    command({ action: "note", text });
  });
  $("older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => $("messages").scrollTop < 60 && loadOlder());
  $("back").addEventListener("click", () => (location.hash = "#/"));
  $("presence").addEventListener("change", (ev) => setPresence(ev.target.value));
  $("logout").addEventListener("click", () => api.logout(false));
  $("logout-all").addEventListener("click", () => api.logout(true));
  $("invite-form").addEventListener("submit", invite);
  $("number-form").addEventListener("submit", addNumber);
  $("policy-form").addEventListener("submit", setPolicy);
  api.onLogout(() => {
    if (state.stopFeed) state.stopFeed();
    state.stopFeed = null;
    state.me = null;
    location.hash = "#/";
    showLogin();
  });
  window.addEventListener("hashchange", route);
  // Said again every minute while logged in: a stream whose end the API noticed
  // late (a dead connection is found at its next ping) may have said "offline"
  // after this tab was back; the router's grace period outlasts the minute.
  setInterval(() => state.me && state.stopFeed && setPresence($("presence").value || "online"), 60_000);
  setInterval(() => {
    if (state.conversation) {
      activity("viewing");
      drawViewers();
    }
  }, 10_000);
}

wire();
if (api.loggedIn()) start().catch(() => showLogin());
else showLogin();
