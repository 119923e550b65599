// The web chat page (contract §10): send through POST /v1/requests, follow the answer on the
// hub (envelope protocol §5 or nchan §9), in either payload mode (full or compact), stop it
// through POST /v1/cancel. No build step and no dependencies: the service serves this file.

const $ = (id) => document.getElementById(id);
const ui = {
  conversation: $("conversation"),
  newConversation: $("new-conversation"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  history: $("history"),
  turn: $("turn"),
  question: $("question"),
  notes: $("notes"),
  answer: $("answer"),
  error: $("error"),
  status: $("status"),
  composer: $("composer"),
  input: $("message-input"),
  send: $("send"),
  stop: $("stop"),
};

// ----- storage: the conversation survives reloads (localStorage), the token only the tab --

const CHANNEL_KEY = "webchat.channel";
const TOKEN_KEY = "webchat.token";
const QUESTIONS_KEY = "webchat.questions.";
const KEPT_QUESTIONS = 50;

function read(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null; // storage disabled: the page still works, it just forgets on reload
  }
}

function write(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    /* see read() */
  }
}

function storedQuestions(channel) {
  try {
    const list = JSON.parse(read(localStorage, QUESTIONS_KEY + channel) || "[]");
    return new Map(list.map((entry) => [entry.id, entry.question]));
  } catch {
    return new Map();
  }
}

function rememberQuestion(channel, id, question) {
  const kept = [...storedQuestions(channel)].map(([key, text]) => ({ id: key, question: text }));
  kept.push({ id, question });
  write(localStorage, QUESTIONS_KEY + channel, JSON.stringify(kept.slice(-KEPT_QUESTIONS)));
}

function newId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // randomUUID needs https
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ----- one request's answer, rebuilt from its payloads in seq order -----

class Turn {
  constructor(id, question, { fromPayload = false } = {}) {
    this.id = id;
    this.question = question;
    this.text = "";
    this.notes = [];
    this.error = "";
    this.outcome = null; // "done" | "error" | "cancelled" once the final payload arrived
    this.seq = -1; // last payload applied
    this.pending = new Map(); // payloads that arrived ahead of a gap
    // A turn first seen through a payload (another tab, a replay whose start expired, a
    // reload on a hub that keeps nothing) takes whatever comes first.
    this.resync = fromPayload;
    this.stopping = false;
  }

  get status() {
    return this.outcome || "streaming";
  }

  // Apply `payload` when its turn comes; true when something changed.
  accept(payload) {
    const seq = payload.seq;
    if (!Number.isInteger(seq)) return this.apply(payload);
    if (seq === 0 && payload.status === "started" && this.seq > 0 && !this.outcome) {
      this.restart(); // the request runs again from the start (contract §12)
    }
    if (seq <= this.seq) return false;
    if (seq !== this.seq + 1 && !this.resync && !wholeAnswer(payload)) {
      this.pending.set(seq, payload);
      return false;
    }
    this.resync = false;
    this.apply(payload);
    this.seq = seq;
    for (const key of [...this.pending.keys()]) if (key <= seq) this.pending.delete(key);
    let next;
    while ((next = this.pending.get(this.seq + 1))) {
      this.pending.delete(this.seq + 1);
      this.apply(next);
      this.seq += 1;
    }
    return true;
  }

  apply(p) {
    if (p.type === "response") {
      if (wholeAnswer(p)) this.text = p.message;
      else if (typeof p.delta === "string") this.text += p.delta;
      if (p.final_message) this.outcome = "done";
    } else if (p.type === "tool") {
      this.notes.push(p.message || `Calling ${p.tool && p.tool.name}`);
    } else if (p.type === "error" || p.type === "timeout") {
      const code = p.error && p.error.code;
      this.error = p.error_details || p.message || code || "The request failed";
      this.outcome = code === "cancelled" ? "cancelled" : "error";
    }
    if (p.final_message && !this.outcome) this.outcome = "done";
    return true;
  }

  restart() {
    this.text = "";
    this.notes = [];
    this.error = "";
    this.seq = -1;
    this.pending.clear();
  }

  fail(message) {
    this.error = message;
    this.outcome = "error";
  }
}

// Full mode: every response payload carries the whole answer in `message`. Compact mode
// (§9): `message` is "" except on snapshots and on the final payload.
function wholeAnswer(p) {
  if (p.type !== "response" || typeof p.message !== "string") return false;
  return p.snapshot === true || p.final_message === true || p.message !== "";
}

// ----- the hub: envelope frames (§5) or nchan's WebSocket subscriber (§9) -----

class HubConnection {
  constructor(url, onPayload) {
    this.url = url;
    this.onPayload = onPayload;
    this.channel = null;
    this.socket = null;
    this.backoff = 250;
    this.timer = null;
    this.readyWaiters = [];
    this.isReady = false;
  }

  follow(channel) {
    this.channel = channel;
    this.restart();
  }

  // Resolves once payloads of the channel will reach us; false after `timeout` ms.
  ready(timeout = 3000) {
    if (this.isReady) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeout);
      this.readyWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  markReady() {
    this.isReady = true;
    this.backoff = 250;
    for (const wake of this.readyWaiters.splice(0)) wake();
  }

  restart() {
    clearTimeout(this.timer);
    if (this.socket) {
      // The old socket may still deliver (another channel's payloads): cut it off first.
      this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
      this.socket.close();
    }
    this.isReady = false;
    this.open();
  }

  open() {
    const socket = this.connect();
    this.socket = socket;
    socket.onmessage = (event) => {
      if (typeof event.data === "string") this.receive(event.data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.isReady = false;
      this.timer = setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }

  deliver(text) {
    let payload;
    try {
      payload = JSON.parse(text);
    } catch {
      return;
    }
    if (payload && typeof payload === "object" && typeof payload.message_id === "string") {
      this.onPayload(payload);
    }
  }
}

class EnvelopeHub extends HubConnection {
  connect() {
    const socket = new WebSocket(this.url);
    const channel = this.channel;
    socket.onopen = () => {
      socket.send(
        JSON.stringify({ channel: "subscription", payload: { action: "subscribe", channel } }),
      );
      this.markReady();
    };
    return socket;
  }

  restart() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN && this.previous) {
      const frame = { action: "unsubscribe", channel: this.previous };
      this.socket.send(JSON.stringify({ channel: "subscription", payload: frame }));
    }
    this.previous = this.channel;
    super.restart();
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame && frame.channel === this.channel && frame.payload) {
      this.deliver(JSON.stringify(frame.payload));
    }
  }
}

class NchanHub extends HubConnection {
  // No id on the first connection: nchan starts at the oldest message it keeps, so a page
  // (re)loaded mid-answer rebuilds the whole answer; reconnects resume after the last id.
  connect() {
    const base = this.url.replace(/\/+$/, "");
    let url = `${base}/${this.channel}`;
    if (this.lastId) url += `?last_event_id=${encodeURIComponent(this.lastId)}`;
    const socket = new WebSocket(url, "ws+meta.nchan");
    socket.onopen = () => this.markReady();
    return socket;
  }

  follow(channel) {
    this.lastId = null;
    super.follow(channel);
  }

  receive(data) {
    // ws+meta.nchan: "id: <id>\n[content-type: <type>\n]\n<message>"
    const end = data.indexOf("\n\n");
    if (end < 0) return;
    for (const line of data.slice(0, end).split("\n")) {
      if (line.startsWith("id: ")) this.lastId = line.slice(4);
    }
    this.deliver(data.slice(end + 2));
  }
}

function hubUrl(configured) {
  const url = new URL(configured, window.location.href);
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  return url.href.replace(/\/$/, "");
}

// ----- the page -----

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

class ChatPage {
  constructor(config) {
    this.config = config;
    this.channel = null;
    this.turns = new Map();
    this.order = [];
    this.questions = new Map();
    this.renderScheduled = false;
    this.historyDirty = true;
    this.problem = "";
    this.tokenWaiters = [];
    const HubClass = config.hub_protocol === "nchan" ? NchanHub : EnvelopeHub;
    this.hub = new HubClass(hubUrl(config.hub_url), (payload) => this.onPayload(payload));
  }

  get current() {
    return this.turns.get(this.order[this.order.length - 1]) || null;
  }

  get streaming() {
    const turn = this.current;
    return Boolean(turn && !turn.outcome);
  }

  async start() {
    ui.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    ui.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.stop();
    });
    ui.stop.addEventListener("click", () => this.stop());
    ui.newConversation.addEventListener("click", () => this.newConversation());
    ui.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.acceptToken();
    });
    this.render();
    const stored = read(localStorage, CHANNEL_KEY);
    if (stored) this.follow(stored);
    else await this.newConversation();
  }

  // ----- conversation -----

  follow(channel) {
    this.channel = channel;
    write(localStorage, CHANNEL_KEY, channel);
    this.turns.clear();
    this.order = [];
    this.questions = storedQuestions(channel);
    this.problem = "";
    this.historyDirty = true;
    ui.conversation.textContent = channel;
    this.hub.follow(channel);
    this.render();
  }

  async newConversation() {
    ui.newConversation.disabled = true;
    try {
      const created = await this.post("/v1/conversations", {});
      this.follow(created.channel);
    } catch (error) {
      this.showProblem(`Could not start a conversation: ${error.message}`);
    } finally {
      ui.newConversation.disabled = false;
    }
  }

  // ----- sending and stopping -----

  async send() {
    const text = ui.input.value.trim();
    if (!text || this.streaming || this.sending) return;
    this.sending = true;
    this.problem = "";
    this.render();
    try {
      if (!this.channel) await this.newConversation();
      if (!this.channel) return;
      if (!(await this.hub.ready())) {
        this.showProblem(`The hub at ${this.hub.url} cannot be reached: nothing was sent.`);
        return;
      }
      const id = newId("web-");
      const turn = this.addTurn(id, text);
      rememberQuestion(this.channel, id, text);
      this.questions.set(id, text);
      ui.input.value = "";
      try {
        await this.post("/v1/requests", { message: text, channel: this.channel, message_id: id });
      } catch (error) {
        turn.fail(error.message);
      }
    } finally {
      this.sending = false;
      this.render();
    }
  }

  async stop() {
    const turn = this.current;
    if (!turn || turn.outcome || turn.stopping) return;
    turn.stopping = true;
    this.render();
    try {
      await this.post("/v1/cancel", { message_id: turn.id });
    } catch (error) {
      turn.stopping = false;
      turn.error = `Could not stop: ${error.message}`;
    }
    this.render();
  }

  async post(path, body) {
    for (;;) {
      if (this.config.token_required && !read(sessionStorage, TOKEN_KEY)) {
        await this.askToken();
      }
      const headers = { "Content-Type": "application/json" };
      const token = read(sessionStorage, TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      let response;
      try {
        response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
      } catch {
        throw new ApiError(0, "the service cannot be reached");
      }
      let data = {};
      try {
        data = await response.json();
      } catch {
        /* no JSON body */
      }
      if (response.status === 401) {
        write(sessionStorage, TOKEN_KEY, null); // refused: ask again, then retry
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, data.detail || `HTTP ${response.status}`);
      return data;
    }
  }

  // ----- the token prompt -----

  askToken() {
    ui.tokenForm.hidden = false;
    ui.tokenInput.value = "";
    ui.tokenInput.focus();
    return new Promise((resolve) => this.tokenWaiters.push(resolve));
  }

  acceptToken() {
    const token = ui.tokenInput.value.trim();
    if (!token) return;
    write(sessionStorage, TOKEN_KEY, token);
    ui.tokenForm.hidden = true;
    ui.tokenInput.value = "";
    ui.input.focus();
    for (const wake of this.tokenWaiters.splice(0)) wake();
  }

  // ----- payloads -----

  addTurn(id, question, options) {
    const turn = new Turn(id, question, options);
    this.turns.set(id, turn);
    this.order.push(id);
    this.historyDirty = true;
    return turn;
  }

  onPayload(payload) {
    let turn = this.turns.get(payload.message_id);
    if (!turn) {
      const question = this.questions.get(payload.message_id) || "";
      turn = this.addTurn(payload.message_id, question, { fromPayload: true });
    }
    if (turn.accept(payload)) {
      if (turn !== this.current) this.historyDirty = true;
      this.scheduleRender();
    }
  }

  // ----- rendering -----

  showProblem(message) {
    const turn = this.current;
    if (turn && !turn.outcome) turn.fail(message);
    else this.problem = message;
    this.render();
  }

  scheduleRender() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    setTimeout(() => {
      this.renderScheduled = false;
      this.render();
    }, 0);
  }

  render() {
    const turn = this.current;
    const status = this.problem ? "error" : turn ? turn.status : "idle";
    ui.status.textContent = status;
    ui.turn.classList.toggle("empty", !turn && !this.problem);
    ui.question.hidden = !(turn && turn.question);
    ui.question.textContent = turn ? turn.question : "";
    renderNotes(ui.notes, turn ? turn.notes : [], turn && turn.stopping && !turn.outcome);
    if (ui.answer.textContent !== (turn ? turn.text : "")) {
      ui.answer.textContent = turn ? turn.text : "";
    }
    ui.answer.setAttribute("aria-busy", String(status === "streaming"));
    const error = this.problem || (turn ? turn.error : "");
    ui.error.hidden = !error;
    ui.error.textContent = error || "";
    ui.send.disabled = status === "streaming" || Boolean(this.sending);
    ui.stop.disabled = status !== "streaming" || Boolean(turn && turn.stopping);
    if (this.historyDirty) this.renderHistory();
  }

  renderHistory() {
    this.historyDirty = false;
    const earlier = this.order.slice(0, -1).map((id) => this.turns.get(id));
    const items = earlier.map((turn) => {
      const item = document.createElement("li");
      if (turn.question) item.append(paragraph("question", turn.question));
      const notes = document.createElement("ul");
      notes.className = "notes";
      renderNotes(notes, turn.notes, false);
      if (turn.notes.length) item.append(notes);
      const answer = document.createElement("div");
      answer.className = "answer";
      answer.textContent = turn.text;
      item.append(answer);
      if (turn.error) item.append(paragraph("error", turn.error));
      item.append(paragraph("outcome", turn.status));
      return item;
    });
    ui.history.replaceChildren(...items);
  }
}

function paragraph(className, text) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

function renderNotes(list, notes, stopping) {
  const lines = stopping ? [...notes, "Stopping…"] : notes;
  if (list.textContent === lines.join("")) return;
  list.replaceChildren(
    ...lines.map((line) => {
      const item = document.createElement("li");
      item.textContent = line;
      return item;
    }),
  );
}

async function main() {
  const response = await fetch("/chat/config.json", { cache: "no-store" });
  const config = await response.json();
  const page = new ChatPage(config);
  window.webChat = page; // for a look from the developer tools
  await page.start();
}

main().catch((error) => {
  ui.status.textContent = "error";
  ui.error.hidden = false;
  ui.error.textContent = `The chat could not start: ${error.message}`;
});
