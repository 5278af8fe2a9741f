// offloadd's page: create a request, follow its stream with EventSource, stop it,
// continue the chat with from_status_url. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { source: null, last: null, info: { auth: false } };

function setStatus(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
  const running = status === "waiting" || status === "streaming";
  $("stop").disabled = !running;
  $("send").disabled = running;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = `msg ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  box.append(who, body);
  $("chat").append(box);
  return body;
}

function showUrls(endpoints) {
  const list = $("urls");
  list.replaceChildren();
  for (const [name, url] of Object.entries(endpoints)) {
    if (name === "bearer_token") continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = url;
    dd.dataset.name = name;
    list.append(dt, dd);
  }
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Follow one stream: tokens as they arrive, the final status, then close on [DONE] so
// the browser never reconnects to a finished stream.
function follow(streamUrl, token) {
  const output = addMessage("assistant", "");
  const url = token ? `${streamUrl}?token=${encodeURIComponent(token)}` : streamUrl;
  const source = new EventSource(url);
  state.source = source;
  setStatus("waiting");
  let ended = null;
  const end = (final) => {
    ended = final;
    setStatus(final.status);
    if (final.error) showError(`${final.error.code}: ${final.error.message}`);
  };
  source.onmessage = (event) => {
    if (event.data === "[DONE]") {
      // No error event before [DONE]: the request is done.
      if (!ended) end({ status: "done" });
      source.close();
      state.source = null;
      return;
    }
    let chunk;
    try { chunk = JSON.parse(event.data); } catch { return; }
    if (chunk.error) return end(chunk);
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const text = choice.delta && choice.delta.content;
    if (text) {
      output.textContent += text;
      setStatus("streaming");
    }
  };
  // Transcripts of the first release end with a named status event.
  source.addEventListener("status", (event) => end(JSON.parse(event.data)));
  source.onerror = () => {
    // EventSource reconnects by itself with Last-Event-ID; offloadd answers 204 once the
    // stream has ended, which closes it for good.
    if (source.readyState === EventSource.CLOSED) state.source = null;
  };
}

async function send(event) {
  event.preventDefault();
  showError("");
  const message = $("message").value.trim();
  if (!message) return;
  const messages = [];
  if (!state.last && $("system").value.trim()) {
    messages.push({ role: "system", content: $("system").value.trim() });
  }
  messages.push({ role: "user", content: message });
  const body = { messages, access: $("access").value };
  if ($("model").value.trim()) body.model = $("model").value.trim();
  if (state.last) {
    body.from_status_url = state.last.statusUrl;
    if (state.last.token) body.from_bearer_token = state.last.token;
  }
  const headers = { "Content-Type": "application/json" };
  if ($("api-key").value) headers["X-API-Key"] = $("api-key").value;
  if ($("openai-key").value) headers["X-OpenAI-API-Key"] = $("openai-key").value;
  const response = await fetch("/v1/stream-chatgpt", {
    method: "POST", headers, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (answer.status !== "success") {
    showError(`${answer.error.code}: ${answer.error.message}`);
    return;
  }
  const token = answer.authorization.bearer_token || null;
  state.last = { statusUrl: answer.endpoints.status_url, stopUrl: answer.endpoints.stop_url,
                 token };
  addMessage("user", message);
  $("message").value = "";
  showUrls(answer.endpoints);
  const watch = new URLSearchParams({ watch: answer.endpoints.stream_events_url });
  if (token) watch.set("token", token);
  history.replaceState(null, "", `#${watch}`);
  follow(answer.endpoints.stream_events_url, token);
}

async function stop() {
  if (!state.last) return;
  const response = await fetch(state.last.stopUrl, {
    method: "POST", headers: authHeaders(state.last.token),
  });
  const answer = await response.json();
  if (answer.status === "success") setStatus(answer.conversation_status);
}

function newChat() {
  if (state.source) state.source.close();
  state.source = null;
  state.last = null;
  $("chat").replaceChildren();
  $("urls").replaceChildren();
  history.replaceState(null, "", location.pathname);
  setStatus("idle");
  showError("");
}

// A reload with `#watch=<stream url>` in the address resumes watching that stream.
function resume() {
  const params = new URLSearchParams(location.hash.slice(1));
  const streamUrl = params.get("watch");
  if (!streamUrl) return;
  const token = params.get("token");
  const base = streamUrl.replace(/\.txt$/, "");
  state.last = { statusUrl: `${base}.json`, stopUrl: `${base}/stop`, token };
  showUrls({ status_url: `${base}.json`, stream_events_url: streamUrl, stop_url: `${base}/stop` });
  follow(streamUrl, token);
}

async function start() {
  try {
    state.info = await (await fetch("/v1/info")).json();
  } catch { /* an older server: show everything */ }
  $("api-key-label").hidden = !state.info.auth;
  $("ask").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("new").addEventListener("click", newChat);
  setStatus("idle");
  resume();
}

start();
