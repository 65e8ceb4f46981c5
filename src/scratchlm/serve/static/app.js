// The chat page of `scratchlm serve` (index.html). Plain JavaScript, no framework, no
// dependencies: read it top to bottom: what the browser keeps, showing text, talking to
// the server, sending and stopping, wiring the controls.
"use strict";

// ---------------------------------------------------------------------------------------
// 1. What the browser keeps (localStorage), under two keys:
//    scratchlm.settings: {system, temperature, top_p, max_tokens, seed, api_key}, each a
//                        string as typed ("" means: the server's default / none)
//    scratchlm.chats:    {current: id, chats: [{id, title, updated, messages: [
//                        {role: "user" | "assistant", content: string, note?: string}]}]}
// ---------------------------------------------------------------------------------------
const SETTINGS_KEY = "scratchlm.settings";
const CHATS_KEY = "scratchlm.chats";
const SETTING_FIELDS = {  // setting name -> id of its input
  system: "system", temperature: "temperature", top_p: "top-p",
  max_tokens: "max-tokens", seed: "seed", api_key: "api-key",
};

function readJSON(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;  // missing, corrupt, or storage disabled: start afresh
  }
}

function writeJSON(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    showError(`Could not save in this browser's storage: ${err.message}`);
  }
}

function newChat() {
  return { id: `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
           title: "", updated: Date.now(), messages: [] };
}

// The well-formed chats of a stored or imported value; anything else is left out.
function validChats(stored) {
  const chats = Array.isArray(stored?.chats) ? stored.chats : [];
  return chats.filter((c) => typeof c?.id === "string" && Array.isArray(c.messages)
    && c.messages.every((m) => ["user", "assistant"].includes(m?.role)
                              && typeof m.content === "string"));
}

function loadChats() {
  const stored = readJSON(CHATS_KEY, null);
  const chats = validChats(stored);
  if (chats.length === 0) chats.push(newChat());
  const current = chats.some((c) => c.id === stored?.current) ? stored.current : chats[0].id;
  return { current, chats };
}

const state = {
  settings: readJSON(SETTINGS_KEY, {}),
  store: loadChats(),
  modelId: null,        // from GET /v1/models
  controller: null,     // the AbortController of the answer being streamed, if any
};

function newestFirst(chats) {
  return [...chats].sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

function currentChat() {
  return state.store.chats.find((c) => c.id === state.store.current);
}

function saveChats() {
  writeJSON(CHATS_KEY, state.store);
}

// While an answer streams it is saved at most twice a second, so a reload keeps most of it.
let saveTimer = null;
function saveChatsSoon() {
  if (saveTimer === null) saveTimer = setTimeout(() => { saveTimer = null; saveChats(); }, 500);
}

// ---------------------------------------------------------------------------------------
// 2. Showing text. Every piece of user or model text goes in with textContent, never
//    innerHTML, so a message containing <script> is shown, not run.
// ---------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Splits a message at ``` fence lines into [{kind: "text" | "code", text, lang}]. An
// unclosed fence (an answer still streaming) runs to the end.
function splitFences(text) {
  const parts = [];
  let kind = "text", lang = "", lines = [];
  const flush = () => {
    if (kind === "code" || lines.length > 0) parts.push({ kind, lang, text: lines.join("\n") });
    lines = [];
  };
  for (const line of text.split("\n")) {
    const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
    if (fence && kind === "text") { flush(); kind = "code"; lang = fence[1]; }
    else if (fence && kind === "code" && fence[1] === "") { flush(); kind = "text"; lang = ""; }
    else lines.push(line);
  }
  flush();
  return parts;
}

// A text part, with `inline code` in <code>.
function renderText(text) {
  const node = element("div", "text");
  text.split(/`([^`\n]+)`/).forEach((piece, i) => {
    node.append(i % 2 === 1 ? element("code", "", piece) : document.createTextNode(piece));
  });
  return node;
}

function renderCode(text, lang) {
  const pre = element("pre");
  const code = element("code", lang ? `language-${lang}` : "", text);
  const copy = element("button", "copy", "Copy");
  copy.type = "button";
  copy.addEventListener("click", () => {
    // The clipboard API exists only on https:// or localhost pages.
    if (!navigator.clipboard) { copy.textContent = "No clipboard here"; return; }
    navigator.clipboard.writeText(text).then(() => { copy.textContent = "Copied"; },
                                             () => { copy.textContent = "Copy failed"; });
  });
  pre.append(code, copy);
  return pre;
}

// Fills `node` with the message text: paragraphs as text, ``` blocks as <pre><code>.
function renderContent(node, text) {
  node.replaceChildren(...splitFences(text).map((part) =>
    part.kind === "code" ? renderCode(part.text, part.lang) : renderText(part.text)));
}

function renderMessage(message) {
  const node = element("div", `message ${message.role}`);
  node.append(element("div", "who", message.role === "user" ? "You" : "Model"));
  const content = element("div", "content");
  renderContent(content, message.content);
  node.append(content);
  if (message.note) node.append(element("div", "note", message.note));
  return node;
}

function renderMessages() {
  const messages = currentChat().messages;
  const list = $("messages");
  list.replaceChildren(...messages.map(renderMessage));
  if (messages.length === 0) {
    const hint = "Ask the model something. Enter sends, Shift+Enter a new line.";
    list.append(element("p", "empty", hint));
  }
  list.scrollTop = list.scrollHeight;
}

function renderChatList() {
  const items = newestFirst(state.store.chats).map((chat) => {
    const item = element("li", chat.id === state.store.current ? "current" : "");
    const open = element("button", "open", chat.title || "New chat");
    open.type = "button";
    open.title = chat.title || "New chat";
    open.addEventListener("click", () => switchChat(chat.id));
    const remove = element("button", "delete", "×");
    remove.type = "button";
    remove.title = "Delete this chat";
    remove.setAttribute("aria-label", `Delete chat: ${chat.title || "New chat"}`);
    remove.addEventListener("click", () => deleteChat(chat.id));
    item.append(open, remove);
    return item;
  });
  $("chats").replaceChildren(...items);
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---------------------------------------------------------------------------------------
// 3. Talking to the server: GET /v1/models, then POST /v1/chat/completions streamed as
//    server-sent events ("data: {chunk}" lines, ending with "data: [DONE]").
// ---------------------------------------------------------------------------------------
class ServerError extends Error {}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = (state.settings.api_key || "").trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

// A message a user can act on, from a failed response (OpenAI's error JSON when present).
async function responseError(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = body?.error?.message || "";
  } catch { /* not JSON: the status says enough */ }
  const status = response.status;
  const said = detail || response.statusText;
  if (status === 401) {
    return new ServerError(`The server needs an API key (401): enter it under Settings. ${said}`);
  }
  if (status === 503 || status === 429) {
    return new ServerError(
      `The server is busy: its queue is full (${status}). Try again in a moment. ${said}`);
  }
  if (status === 400 || status === 413) {
    return new ServerError(`The server refused the request (${status}): ${said}`);
  }
  return new ServerError(`The server answered ${status}: ${said}`);
}

// fetch, with a network failure (server down) turned into a message saying so.
async function request(path, options) {
  try {
    return await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ServerError(`Cannot reach the server at ${location.origin}: `
                          + `is \`scratchlm serve\` still running? (${err.message})`);
  }
}

async function fetchModelId() {
  const response = await request("/v1/models", { headers: headers() });
  if (!response.ok) throw await responseError(response);
  const body = await response.json();
  const id = body?.data?.[0]?.id;
  if (!id) throw new ServerError("The server lists no model at /v1/models.");
  state.modelId = id;
  $("model").textContent = id;
  return id;
}

// At start and after a new API key: the model's name in the header, or why there is none.
// Success clears only the error that connecting showed, not one shown meanwhile.
let connectError = null;
function connect() {
  fetchModelId().then(() => {
    if (connectError !== null && $("error").textContent === connectError) clearError();
    connectError = null;
  }, (err) => {
    $("model").textContent = "not connected";
    connectError = err.message;
    showError(err.message);
  });
}

// The request body: the whole conversation (system prompt first) and the sampling settings.
function chatRequest(messages) {
  const s = state.settings;
  const body = { model: state.modelId, stream: true, messages: [] };
  if ((s.system || "").trim()) body.messages.push({ role: "system", content: s.system });
  for (const m of messages) body.messages.push({ role: m.role, content: m.content });
  // Numbers go as typed: a bad value comes back from the server as a 400 naming the field.
  const numbers = {
    temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens, seed: s.seed,
  };
  for (const [name, text] of Object.entries(numbers)) {
    const typed = (text || "").trim();
    if (typed !== "") body[name] = Number.isNaN(Number(typed)) ? typed : Number(typed);
  }
  return body;
}

// Streams one answer: calls onText(piece) for each piece of text, returns the finish reason.
async function streamChat(messages, signal, onText) {
  const response = await request("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify(chatRequest(messages)), signal,
  });
  if (!response.ok) throw await responseError(response);
  const reader = response.body.getReader();
  // decode(..., {stream: true}) keeps a character split across two reads whole.
  const decoder = new TextDecoder();
  let buffer = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();  // the last piece may be an unfinished line
    for (const raw of lines) {
      const line = raw.replace(/\r$/, "");
      if (!line.startsWith("data:")) continue;  // blank separators, comments, other fields
      const data = line.slice(5).trim();
      if (data === "[DONE]") return finish;
      const event = JSON.parse(data);
      if (event.error) {
        throw new ServerError(`The server stopped with an error: ${event.error.message}`);
      }
      for (const choice of event.choices || []) {
        if (choice.delta?.content) onText(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  throw new ServerError("The connection closed before the answer finished (no [DONE]).");
}

// ---------------------------------------------------------------------------------------
// 4. Sending and stopping.
// ---------------------------------------------------------------------------------------
function setGenerating(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  document.body.classList.toggle("generating", on);
}

async function send() {
  const text = $("input").value;
  if (text.trim() === "" || state.controller) return;
  clearError();
  const chat = currentChat();
  const userTurn = { role: "user", content: text };
  chat.messages.push(userTurn);
  if (!chat.title) chat.title = text.trim().slice(0, 60);
  chat.updated = Date.now();
  $("input").value = "";
  resizeInput();
  saveChats();
  renderChatList();
  renderMessages();

  const answer = { role: "assistant", content: "" };
  const answerNode = renderMessage(answer);
  const contentNode = answerNode.querySelector(".content");
  const list = $("messages");
  list.append(answerNode);
  list.scrollTop = list.scrollHeight;

  const controller = new AbortController();
  state.controller = controller;
  setGenerating(true);
  try {
    if (!state.modelId) await fetchModelId();
    chat.messages.push(answer);
    const finish = await streamChat(chat.messages.slice(0, -1), controller.signal, (piece) => {
      const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      answer.content += piece;
      renderContent(contentNode, answer.content);
      if (atBottom) list.scrollTop = list.scrollHeight;
      saveChatsSoon();
    });
    if (finish === "length") answer.note = "[cut off: max tokens or the context length reached]";
  } catch (err) {
    if (err.name === "AbortError") {
      answer.note = "[stopped]";
    } else {
      showError(err instanceof ServerError ? err.message : `Something went wrong: ${err.message}`);
      if (!(err instanceof ServerError)) console.error(err);  // a bug in the page: keep its trace
      if (answer.content === "") {
        // Nothing came back: take the turn out and give the text back to retry.
        chat.messages = chat.messages.filter((m) => m !== answer && m !== userTurn);
        if ($("input").value === "") { $("input").value = text; resizeInput(); }
      } else {
        answer.note = "[interrupted]";
      }
    }
  } finally {
    state.controller = null;
    setGenerating(false);
    chat.updated = Date.now();
    saveChats();
    if (chat === currentChat()) renderMessages();
    renderChatList();
  }
}

// Aborting the fetch closes the connection; the server sees that and cancels the
// generation, so Stop frees the server too, not only the page.
function stop() {
  state.controller?.abort();
}

function switchChat(id) {
  stop();
  state.store.current = id;
  saveChats();
  renderChatList();
  renderMessages();
  clearError();
  document.body.classList.remove("side-open");
}

function startNewChat() {
  stop();
  const chat = currentChat();
  if (chat.messages.length > 0) {
    const fresh = newChat();
    state.store.chats.push(fresh);
    state.store.current = fresh.id;
  }
  saveChats();
  renderChatList();
  renderMessages();
  clearError();
  document.body.classList.remove("side-open");
  $("input").focus();
}

function deleteChat(id) {
  if (id === state.store.current) stop();
  state.store.chats = state.store.chats.filter((c) => c.id !== id);
  if (state.store.chats.length === 0) state.store.chats.push(newChat());
  if (!state.store.chats.some((c) => c.id === state.store.current)) {
    state.store.current = newestFirst(state.store.chats)[0].id;
  }
  saveChats();
  renderChatList();
  renderMessages();
}

// Every chat to a file, so that history is not only in this browser.
function exportChats() {
  const file = new Blob([JSON.stringify(state.store, null, 1)], { type: "application/json" });
  const link = element("a");
  link.href = URL.createObjectURL(file);
  link.download = "scratchlm-chats.json";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// Adds the chats of an exported file (those not already here) and opens the newest.
async function importChats(file) {
  let chats;
  try {
    chats = validChats(JSON.parse(await file.text()));
  } catch (err) {
    showError(`${file.name} is not a chats file (JSON): ${err.message}`);
    return;
  }
  if (chats.length === 0) {
    showError(`${file.name} holds no chats: export them with the Export button`);
    return;
  }
  stop();
  const known = new Set(state.store.chats.map((c) => c.id));
  const added = chats.filter((c) => !known.has(c.id));
  state.store.chats.push(...added);
  state.store.chats = state.store.chats.filter((c) => c.messages.length > 0);
  if (state.store.chats.length === 0) state.store.chats.push(newChat());
  state.store.current = newestFirst(state.store.chats)[0].id;
  saveChats();
  renderChatList();
  renderMessages();
  clearError();
}

// ---------------------------------------------------------------------------------------
// 5. Wiring the controls.
// ---------------------------------------------------------------------------------------
function resizeInput() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + 2}px`;
}

for (const [name, id] of Object.entries(SETTING_FIELDS)) {
  const field = $(id);
  field.value = state.settings[name] ?? "";
  field.addEventListener("input", () => {
    state.settings[name] = field.value;
    writeJSON(SETTINGS_KEY, state.settings);
  });
}
// A new API key: ask the server again, so the page shows at once whether it is accepted.
$("api-key").addEventListener("change", () => { state.modelId = null; connect(); });

$("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("input").addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; not while an input method is composing a word.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
  if (event.key === "Escape") stop();
});
$("input").addEventListener("input", resizeInput);
$("stop").addEventListener("click", stop);
$("new-chat").addEventListener("click", startNewChat);
$("export").addEventListener("click", exportChats);
$("import").addEventListener("click", () => $("import-file").click());
$("import-file").addEventListener("change", (event) => {
  if (event.target.files[0]) importChats(event.target.files[0]);
  event.target.value = "";  // the same file again is a new choice
});
$("menu").addEventListener("click", () => {
  const open = document.body.classList.toggle("side-open");
  $("menu").setAttribute("aria-expanded", String(open));
});
// Chats opened in another tab: show them here too.
window.addEventListener("storage", (event) => {
  if (event.key === CHATS_KEY && !state.controller) {
    state.store = loadChats();
    renderChatList();
    renderMessages();
  }
});

renderChatList();
renderMessages();
connect();
$("input").focus();
