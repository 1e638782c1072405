// The chat page of `mpt-lite serve`: plain JS, no dependencies, nothing fetched but this server.
// Replies stream over POST /v1/chat/completions (stream: true) and are read with fetch + a
// ReadableStream. Model output is only ever inserted as text (textContent / text nodes), never
// parsed as HTML: a reply that says <script> shows "<script>".
"use strict";

const KEY_STORE = "mpt-lite-api-key";
const PAINT_MS = 30;  // the longest a streamed reply waits to be shown
const $ = (id) => document.getElementById(id);

const state = {
  history: [],        // [{role, content}] of the finished turns
  controller: null,   // the AbortController of the reply in flight
  pending: null,      // text to send again once the user gave an API key
  chat: 0,            // counts New chat: a reply that ends after one belongs to no conversation
};

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text || ""; }

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

// ---- rendering: text only ----

function appendCode(el, lines, lang) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (lang) code.dataset.lang = lang;
  code.textContent = lines.join("\n");
  pre.appendChild(code);
  el.appendChild(pre);
}

// Text with ``` fenced blocks: text nodes and <pre><code> built with textContent. A block not yet
// closed (the reply is still streaming) shows as code up to the end.
function renderContent(el, text) {
  el.replaceChildren();
  let prose = [];
  let code = null;
  let lang = "";
  const flush = () => {
    if (prose.length) el.appendChild(document.createTextNode(prose.join("\n")));
    prose = [];
  };
  for (const line of text.split("\n")) {
    if (code === null) {
      const open = /^\s*```\s*([\w+#.-]*)\s*$/.exec(line);
      if (open) { flush(); code = []; lang = open[1]; } else prose.push(line);
    } else if (/^\s*```\s*$/.test(line)) {
      appendCode(el, code, lang);
      code = null;
    } else {
      code.push(line);
    }
  }
  if (code !== null) appendCode(el, code, lang); else flush();
}

function scrollDown() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  const meta = document.createElement("div");
  meta.className = "meta";
  box.append(who, content, meta);
  if (role === "user") content.textContent = text; else renderContent(content, text);
  $("messages").appendChild(box);
  scrollDown();
  return box;
}

// ---- the API ----

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return response.statusText || "no details";
}

// The `data:` payloads of a server-sent event stream, as they arrive.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

function askKey(message) {
  setStatus(message);
  $("key-form").hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.status === 401) {
      askKey(apiKey() ? "The API key was refused: " + (await errorMessage(r)) + ". Enter it again."
                      : "This server needs an API key. Enter it to chat.");
      return false;
    }
    if (r.ok) {
      const models = await r.json();
      $("model-name").textContent = models.data && models.data.length ? models.data[0].id : "";
    }
  } catch (e) {
    setStatus("Cannot reach the server: " + e.message);
  }
  return true;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

function speed(usage, t0, tFirst, tEnd) {
  const n = usage.completion_tokens;
  const parts = [n + (n === 1 ? " token" : " tokens")];
  // decode speed: the tokens after the first over the time after the first arrived
  const rate = n > 1 && tEnd > tFirst ? (n - 1) / ((tEnd - tFirst) / 1000) : n / ((tEnd - t0) / 1000);
  if (Number.isFinite(rate)) parts.push(rate.toFixed(1) + " tokens/s");
  if (tFirst) parts.push("first token " + ((tFirst - t0) / 1000).toFixed(2) + " s");
  return parts.join(" · ");
}

async function send(text) {
  const chat = state.chat;
  setStatus("");
  state.history.push({ role: "user", content: text });
  const userBox = addMessage("user", text);
  const box = addMessage("assistant", "");
  const content = box.querySelector(".content");
  const meta = box.querySelector(".meta");
  box.dataset.state = "streaming";
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let reply = "";
  let usage = null;
  let failure = null;
  const t0 = performance.now();
  let tFirst = 0;
  // A fast model streams hundreds of chunks a second: the reply is re-rendered at most every
  // PAINT_MS (re-rendering on every chunk grows as the square of the reply and froze the page).
  let timer = null;
  const paint = () => {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    renderContent(content, reply);
    scrollDown();
  };
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (r.status === 401) {
      const why = await errorMessage(r);
      state.history.pop();
      userBox.remove();
      box.remove();
      state.pending = text;
      askKey((apiKey() ? "The API key was refused: " : "This server needs an API key: ") + why +
             ". Enter the key; the message is sent again.");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status + ": " + (await errorMessage(r)));
    let complete = false;
    for await (const data of sseData(r.body)) {
      if (data === "[DONE]") { complete = true; break; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the server failed");
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (!tFirst) tFirst = performance.now();
        reply += delta.content;
        if (timer === null) timer = setTimeout(paint, PAINT_MS);
      }
    }
    paint();
    if (!complete) throw new Error("the connection closed before the reply was complete");
    box.dataset.state = "done";
    if (usage) meta.textContent = speed(usage, t0, tFirst, performance.now());
  } catch (e) {
    paint();
    if (e.name === "AbortError") {
      box.dataset.state = "stopped";
      meta.textContent = "stopped";
      meta.classList.add("notice");
    } else {
      failure = e.message;
      box.dataset.state = "error";
      box.classList.add("error");
      meta.textContent = "error: " + failure;
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
    }
    scrollDown();
  }
  if (state.chat !== chat) return;
  if (!reply && box.dataset.state !== "done") {
    state.history.pop();  // failed or stopped before any text: leave the turn out of the conversation
  } else {
    state.history.push({ role: "assistant", content: reply });  // a stopped reply is kept as it stands
  }
}

// ---- the controls ----

function submitMessage() {
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  send(text);
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.chat += 1;
  state.history = [];
  state.pending = null;
  $("messages").replaceChildren();
  setStatus("");
  $("input").focus();
}

async function submitKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-form").hidden = true;
  setStatus("");
  if (!(await loadModel())) return;
  const text = state.pending;
  state.pending = null;
  if (text !== null) send(text);
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); submitMessage(); });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submitMessage(); }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("new-chat").addEventListener("click", newChat);
  $("key-form").addEventListener("submit", submitKey);
  loadModel();
  $("input").focus();
});
