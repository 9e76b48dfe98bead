// Switchboard inspector. Plain JavaScript, no dependencies and no inline code: the page's
// Content-Security-Policy only runs scripts and styles served by the node.
//
// It polls small JSON endpoints (status every second, the topic list and the open topic
// every two seconds, presence and history every five; nothing while the tab is hidden),
// computes rates from counters itself, and tails a topic over a streamed fetch of
// text/event-stream (EventSource cannot send the Authorization header).
"use strict";

(() => {
  const KEY_STORAGE = "switchboard.inspector.key";
  const STATUS_MS = 1000;
  const TOPICS_MS = 2000;
  const TOPIC_MS = 2000;
  const SLOW_MS = 5000;
  const SAMPLES = 300; // five minutes of one-second samples
  const PAGE = 50;
  const TAIL_KEEP = 200;
  const PAYLOAD_SHOWN = 2000;
  const HISTORY_SHOWN = 20;

  const $ = (id) => document.getElementById(id);
  const whole = new Intl.NumberFormat("en");
  const rate = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
  const enc = encodeURIComponent;

  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  let open = false;
  let loops = [];

  class Unauthorized extends Error {}

  class HttpError extends Error {
    constructor(status, body) {
      super(body?.error?.message || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function headers(extra = {}) {
    return apiKey ? { ...extra, authorization: `Bearer ${apiKey}` } : extra;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function plural(n, one, many = `${one}s`) {
    return `${whole.format(n)} ${n === 1 ? one : many}`;
  }

  function duration(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = Math.floor(seconds % 60);
    if (d) return `${d}d ${h}h ${m}m`;
    if (h) return `${h}h ${m}m ${s}s`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function clock(date = new Date()) {
    return date.toLocaleTimeString("en-GB", { hour12: false });
  }

  function shown(value) {
    const text = JSON.stringify(value);
    return text.length > PAYLOAD_SHOWN ? `${text.slice(0, PAYLOAD_SHOWN)}… (${whole.format(text.length)} characters)` : text;
  }

  // ---- polling ---------------------------------------------------------------------------

  /** Runs `task` now and then every `ms` (a number, or a function giving one) while the tab
   *  is visible; returns its stopper. */
  function every(ms, task) {
    let timer = null;
    let stopped = false;
    const run = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try {
          await task();
        } catch (error) {
          failed(error);
        }
      }
      if (!stopped) timer = setTimeout(run, typeof ms === "function" ? ms() : ms);
    };
    run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  function failed(error) {
    if (error instanceof Unauthorized) {
      signOut("The node refused the key; enter it again.");
    } else {
      pill("unreachable", "bad");
    }
  }

  function stopLoops() {
    for (const stop of loops) stop();
    loops = [];
  }

  // ---- access ----------------------------------------------------------------------------

  async function checkKey(key) {
    const response = await fetch("/admin/api/auth", {
      headers: key ? { authorization: `Bearer ${key}` } : {},
      cache: "no-store",
    });
    return response.json();
  }

  async function boot() {
    let auth;
    try {
      auth = await checkKey(apiKey);
    } catch {
      pill("unreachable", "bad");
      setTimeout(boot, 3000);
      return;
    }
    if (!auth.required) {
      open = true;
      apiKey = "";
      showApp();
    } else if (auth.accepted) {
      showApp();
    } else {
      showLogin(apiKey ? "The saved key was refused; enter it again." : "");
    }
  }

  function showLogin(message) {
    stopLoops();
    stopTail();
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    pill("locked", "");
    $("key").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("open-banner").hidden = !open;
    $("sign-out").hidden = open;
    // A page of a very long topic list costs the hub a few milliseconds: ask less often then.
    const topicsEvery = () => (topicTotal > 10000 ? SLOW_MS : TOPICS_MS);
    loops = [every(STATUS_MS, loadStatus), every(topicsEvery, loadTopics), every(TOPIC_MS, refreshTopic)];
    loops.push(every(SLOW_MS, refreshTopicLists));
  }

  function signOut(message = "") {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin(message);
  }

  async function login(event) {
    event.preventDefault();
    const input = $("key");
    const key = input.value.trim();
    const error = $("login-error");
    if (!key) {
      error.textContent = "Enter the API key.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    let auth;
    try {
      auth = await checkKey(key);
    } catch {
      error.textContent = "The node did not answer; try again.";
      return;
    }
    if (!auth.accepted) {
      error.textContent = "That key was refused.";
      input.setAttribute("aria-invalid", "true");
      input.select();
      return;
    }
    apiKey = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    input.removeAttribute("aria-invalid");
    error.textContent = "";
    showApp();
    $("main").focus();
  }

  // ---- status and charts -----------------------------------------------------------------

  const CARDS = [
    { label: "Connections", gauge: "connections" },
    { label: "Topics", gauge: "topics" },
    { label: "Subscriptions", gauge: "subscriptions" },
    { label: "Frames in", counter: "frames_in", unit: "/s" },
    { label: "Frames out", counter: "frames_out", unit: "/s" },
    { label: "Publishes", counter: "publishes", unit: "/s" },
    { label: "Slow consumers", counter: "slow_consumer_disconnects", total: true, unit: "closed" },
  ];
  let previous = null;

  function buildCards() {
    const box = $("cards");
    for (const card of CARDS) {
      const node = el("div", "card");
      node.setAttribute("role", "group");
      node.setAttribute("aria-label", card.label);
      node.append(el("span", "label", card.label));
      const value = el("span", "value", "–");
      node.append(value);
      const canvas = el("canvas");
      canvas.setAttribute("aria-hidden", "true");
      node.append(canvas);
      box.append(node);
      Object.assign(card, { value, canvas, samples: [] });
    }
  }

  function colors() {
    const style = getComputedStyle(document.documentElement);
    return { line: style.getPropertyValue("--accent").trim(), fill: style.getPropertyValue("--accent-soft").trim() };
  }

  function draw(canvas, samples) {
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (samples.length < 2) return;
    const { line, fill } = colors();
    const top = Math.max(1, ...samples);
    // The time axis spans at least a minute, then grows to five as samples come.
    const step = width / (Math.min(SAMPLES, Math.max(60, samples.length)) - 1);
    const first = width - (samples.length - 1) * step;
    const y = (value) => height - 1.5 - (value / top) * (height - 4);
    ctx.beginPath();
    samples.forEach((value, i) => (i ? ctx.lineTo(first + i * step, y(value)) : ctx.moveTo(first, y(value))));
    ctx.strokeStyle = line;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(width, height);
    ctx.lineTo(first, height);
    ctx.closePath();
    ctx.fillStyle = fill;
    ctx.fill();
  }

  function fact(id, text, tone) {
    const node = $(id);
    node.textContent = text;
    node.className = tone || "";
  }

  function pill(text, tone) {
    const node = $("node-pill");
    node.textContent = text;
    node.className = `pill ${tone}`;
  }

  async function loadStatus() {
    const status = await getJSON("/admin/api/status");
    const now = performance.now();
    pill(status.ready ? `ready · ${status.backend}` : "not ready", status.ready ? "ok" : "bad");
    fact("f-version", status.version);
    fact("f-uptime", duration(status.uptime_seconds));
    fact("f-backend", status.backend);
    fact("f-bridge", status.bridge === "none" ? "none (runs alone)" : status.bridge, status.bridge === "down" ? "bad" : status.bridge === "up" ? "good" : "");
    fact("f-ready", status.ready ? "ready" : "not ready", status.ready ? "good" : "bad");
    fact("f-auth", status.auth === "token" ? "token required" : "open (no token)", status.auth === "open" ? "bad" : "");
    fact("f-publish", status.publish === "api_key" ? "API key" : "open", status.publish === "open" ? "bad" : "");
    fact("f-tails", whole.format(status.gauges.tails));
    const reason = $("f-reason");
    reason.hidden = !status.reason;
    reason.textContent = status.reason || "";

    const seconds = previous ? (now - previous.at) / 1000 : 0;
    for (const card of CARDS) {
      let sample;
      if (card.gauge) {
        sample = status.gauges[card.gauge];
        card.value.textContent = whole.format(sample);
      } else {
        const count = status.counters[card.counter];
        const before = previous?.counters[card.counter];
        // A counter that went down belongs to a restarted node: start again from it.
        const delta = before !== undefined && count >= before ? count - before : 0;
        if (card.total) {
          sample = delta;
          card.value.textContent = whole.format(count);
        } else {
          sample = seconds > 0 ? delta / seconds : 0;
          card.value.textContent = rate.format(sample);
        }
        if (card.unit) card.value.append(el("span", "unit", card.unit));
      }
      if (previous || card.gauge) {
        card.samples.push(sample);
        if (card.samples.length > SAMPLES) card.samples.shift();
      }
      draw(card.canvas, card.samples);
    }
    previous = { at: now, counters: status.counters };
  }

  // ---- topic list ------------------------------------------------------------------------

  let offset = 0;
  let filter = "";
  let matched = 0;
  let topicTotal = 0;
  const rows = [];

  function row(i) {
    if (!rows[i]) {
      const tr = el("tr");
      const name = el("td");
      const button = el("button", "link");
      button.type = "button";
      button.addEventListener("click", () => openTopic(button.dataset.topic));
      name.append(button);
      const count = el("td", "num");
      tr.append(name, count);
      $("topic-rows").append(tr);
      rows[i] = { tr, button, count };
    }
    return rows[i];
  }

  async function loadTopics() {
    const query = new URLSearchParams({ offset, limit: PAGE });
    if (filter) query.set("filter", filter);
    const page = await getJSON(`/admin/api/topics?${query}`);
    if (page.filter !== filter || page.offset !== offset) return; // an older request
    matched = page.matched;
    topicTotal = page.total;
    if (matched > 0 && offset >= matched) {
      offset = Math.floor((matched - 1) / PAGE) * PAGE;
      return loadTopics();
    }
    // Rows are updated in place, so the focus stays where the keyboard left it.
    page.topics.forEach((topic, i) => {
      const r = row(i);
      r.tr.hidden = false;
      r.tr.classList.toggle("current", topic.topic === selected);
      if (r.button.dataset.topic !== topic.topic) {
        r.button.dataset.topic = topic.topic;
        r.button.textContent = topic.topic;
      }
      r.count.textContent = whole.format(topic.subscribers);
    });
    for (let i = page.topics.length; i < rows.length; i++) rows[i].tr.hidden = true;
    $("topics-empty").hidden = page.topics.length > 0;
    $("topics-empty").textContent = filter ? `No topic contains “${filter}”.` : "No topic has a subscriber on this node.";
    $("topics-count").textContent = filter ? `${whole.format(matched)} of ${whole.format(page.total)}` : whole.format(page.total);
    $("page-info").textContent = matched
      ? `${whole.format(offset + 1)}–${whole.format(offset + page.topics.length)} of ${whole.format(matched)}`
      : "";
    $("prev").disabled = offset === 0;
    $("next").disabled = offset + PAGE >= matched;
  }

  let filterTimer = null;
  function filtered() {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      filter = $("filter").value.trim();
      offset = 0;
      loadTopics().catch(failed);
    }, 250);
  }

  function turn(by) {
    offset = Math.max(0, offset + by * PAGE);
    loadTopics().catch(failed);
  }

  // ---- one topic -------------------------------------------------------------------------

  let selected = null;
  let detail = null;

  async function openTopic(name) {
    if (!name) return;
    if (name !== selected) {
      stopTail();
      $("tail-list").replaceChildren();
      $("tail-count").textContent = "";
      $("presence-list").replaceChildren();
      $("history-list").replaceChildren();
      $("presence-box").hidden = true;
      $("history-box").hidden = true;
      detail = null;
    }
    selected = name;
    $("topic").hidden = false;
    $("no-topic").hidden = true;
    $("topic-name").textContent = name;
    $("p-topic").value = name;
    for (const r of rows) r.tr.classList.toggle("current", r.button.dataset.topic === name);
    const heading = $("topic-title");
    heading.tabIndex = -1;
    heading.focus();
    await refreshTopic().catch(failed);
    await refreshTopicLists().catch(failed);
  }

  function closeTopic() {
    stopTail();
    selected = null;
    detail = null;
    $("topic").hidden = true;
    $("no-topic").hidden = false;
    for (const r of rows) r.tr.classList.remove("current");
    $("filter").focus();
  }

  async function refreshTopic() {
    if (!selected) return;
    const name = selected;
    const answer = await getJSON(`/admin/api/topic?topic=${enc(name)}`);
    if (name !== selected) return;
    detail = answer;
    const tails = answer.tails ? ` (${plural(answer.tails, "inspector tail")})` : "";
    fact("t-subscribers", `${whole.format(answer.subscribers)}${tails}`);
    fact("t-history", answer.history ? `last ${whole.format(answer.history.size)}, ${duration(answer.history.ttl_seconds)}` : "off");
    fact("t-presence", answer.presence ? "on" : "off");
  }

  async function refreshTopicLists() {
    if (!selected || !detail || detail.topic !== selected) return;
    const name = selected;
    const [presence, history] = await Promise.all([
      detail.presence ? getJSON(`/api/presence?topic=${enc(name)}`) : null,
      detail.history ? recentHistory(name) : null,
    ]);
    if (name !== selected) return;
    $("presence-box").hidden = !presence;
    if (presence) {
      $("presence-count").textContent = `${plural(presence.keys, "key")}, ${plural(presence.members, "member")}`;
      const items = Object.entries(presence.presences).map(([key, { metas }]) => {
        const li = el("li");
        const meta = el("div", "meta");
        meta.append(el("span", "event", key), el("span", "", plural(metas.length, "connection")));
        li.append(meta);
        // What each connection says about itself (phx_ref is the node's bookkeeping).
        const said = metas.map(({ phx_ref, ...rest }) => rest).filter((rest) => Object.keys(rest).length);
        if (said.length) li.append(el("pre", "", shown(said.length === 1 ? said[0] : said)));
        return li;
      });
      if (!items.length) items.push(el("li", "muted", "Nobody is here."));
      $("presence-list").replaceChildren(...items);
    }
    $("history-box").hidden = !history;
    if (history) {
      const items = history.map((publication) => entry(publication.event, publication.position, publication.payload));
      if (!items.length) items.push(el("li", "muted", "Nothing kept."));
      $("history-list").replaceChildren(...items.reverse());
    }
  }

  /** The newest publications of `name` (at most HISTORY_SHOWN), oldest first. */
  async function recentHistory(name) {
    const head = await getJSON(`/api/history?topic=${enc(name)}&limit=0`);
    const [latest, epoch] = head.position.split(":");
    const from = Math.max(0, Number(latest) - Math.min(HISTORY_SHOWN, detail.history.size));
    const since = from > 0 ? `&since=${enc(`${from}:${epoch}`)}` : "";
    const read = await getJSON(`/api/history?topic=${enc(name)}${since}&limit=${HISTORY_SHOWN}`);
    return read.publications;
  }

  function entry(event, position, payload, at) {
    const li = el("li");
    const meta = el("div", "meta");
    if (at) meta.append(el("time", "", clock(at)));
    meta.append(el("span", "event", event));
    if (position) meta.append(el("span", "mono", position));
    li.append(meta, el("pre", "", shown(payload)));
    return li;
  }

  // ---- live tail -------------------------------------------------------------------------

  let tail = null;

  function tailStatus(text) {
    $("tail-status").textContent = text;
  }

  function stopTail() {
    if (!tail) return;
    tail.controller.abort();
    tail = null;
    tailButton(false);
    tailStatus("Tail stopped.");
  }

  function tailButton(on) {
    const button = $("tail-toggle");
    button.textContent = on ? "Stop tail" : "Start tail";
    button.setAttribute("aria-pressed", String(on));
  }

  async function startTail() {
    if (!selected || tail) return;
    const current = { controller: new AbortController(), topic: selected, count: 0, pending: [], timer: null };
    tail = current;
    tailButton(true);
    tailStatus("Subscribing…");
    const ended = (text) => {
      if (tail !== current) return;
      tail = null;
      tailButton(false);
      tailStatus(text);
    };
    let response;
    try {
      response = await fetch(`/admin/api/tail?topic=${enc(current.topic)}`, {
        headers: headers({ accept: "text/event-stream" }),
        cache: "no-store",
        signal: current.controller.signal,
      });
    } catch {
      return ended(current.controller.signal.aborted ? "Tail stopped." : "The node did not answer.");
    }
    if (response.status === 401) {
      ended("");
      return signOut("The node refused the key; enter it again.");
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      return ended(`The node refused the tail: ${body?.error?.message || response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let closed = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          closed = sse(current, block) ?? closed;
        }
      }
      ended(closed ? `The node closed the tail: ${closed}.` : "The node ended the tail.");
    } catch {
      ended(current.controller.signal.aborted ? "Tail stopped." : "The tail was cut off.");
    }
  }

  /** Handles one Server-Sent Event of `current`; returns the reason of a `closed` event. */
  function sse(current, block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    const body = JSON.parse(data.join("\n"));
    if (name === "subscribed") {
      const reach = body.reach === "local_only" ? " (this node only: the bridge is down)" : "";
      const position = body.position ? ` at ${body.position}` : "";
      tailStatus(`Tailing ${body.topic}${position}${reach}. New messages appear at the top.`);
    } else if (name === "message") {
      current.count += 1;
      current.pending.push(entry(body.event, body.position, body.payload, new Date()));
      if (current.pending.length > TAIL_KEEP) current.pending.shift();
      if (!current.timer) current.timer = setTimeout(() => flushTail(current), 100);
    } else if (name === "closed") {
      return body.reason;
    }
    return null;
  }

  /** Shows what a tail received since the last flush (at most ten times a second). */
  function flushTail(current) {
    current.timer = null;
    const list = $("tail-list");
    list.prepend(...current.pending.reverse());
    current.pending = [];
    while (list.childElementCount > TAIL_KEEP) list.lastElementChild.remove();
    $("tail-count").textContent = plural(current.count, "message");
  }

  // ---- publish ---------------------------------------------------------------------------

  const FIELDS = { topic: "p-topic", event: "p-event", payload: "p-payload" };

  function fieldError(field, message) {
    const input = $(FIELDS[field]);
    $(`${FIELDS[field]}-error`).textContent = message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function result(text, tone) {
    const out = $("p-result");
    out.textContent = text;
    out.className = tone;
  }

  async function publish(event) {
    event.preventDefault();
    const topic = $("p-topic").value.trim();
    const name = $("p-event").value.trim();
    const payload = $("p-payload").value;
    const errors = { topic: "", event: "", payload: "" };
    if (!topic) errors.topic = "Enter a topic, e.g. room:lobby.";
    if (name.startsWith("phx_")) errors.event = "Events starting with phx_ belong to the protocol.";
    if (!payload.trim()) {
      errors.payload = "Enter a JSON payload, e.g. {} or \"text\".";
    } else {
      try {
        JSON.parse(payload);
      } catch (error) {
        errors.payload = `Not valid JSON: ${error.message}`;
      }
    }
    for (const [field, message] of Object.entries(errors)) fieldError(field, message);
    const invalid = Object.keys(errors).find((field) => errors[field]);
    if (invalid) {
      result("", "");
      $(FIELDS[invalid]).focus();
      return;
    }
    // The payload goes as typed (already checked), so large numbers keep their digits.
    const body = `{"topic":${JSON.stringify(topic)},${name ? `"event":${JSON.stringify(name)},` : ""}"payload":${payload}}`;
    const send = $("p-send");
    send.disabled = true;
    result("Publishing…", "");
    try {
      const response = await fetch("/api/publish", {
        method: "POST",
        headers: headers({ "content-type": "application/json" }),
        body,
      });
      if (response.status === 401) return signOut("The node refused the key; enter it again.");
      const answer = await response.json().catch(() => null);
      if (response.ok) {
        const position = answer.position ? ` · position ${answer.position}` : "";
        result(`${clock()} · delivered to ${plural(answer.recipients, "subscriber")} on this node${position}`, "good");
        return;
      }
      const code = answer?.error?.code || "";
      const message = answer?.error?.message || `HTTP ${response.status}`;
      const field = { invalid_topic: "topic", invalid_event: "event", invalid_json: "payload", invalid_body: "payload" }[code];
      if (field) {
        fieldError(field, message);
        result("", "");
        $(FIELDS[field]).focus();
      } else {
        const recipients = answer?.recipients !== undefined ? ` (delivered to ${plural(answer.recipients, "subscriber")} here)` : "";
        result(`${message}${recipients}`, "bad");
      }
    } catch {
      result("The node did not answer.", "bad");
    } finally {
      send.disabled = false;
    }
  }

  // ---- wiring ----------------------------------------------------------------------------

  buildCards();
  $("login-form").addEventListener("submit", login);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("filter").addEventListener("input", filtered);
  $("prev").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  $("topic-close").addEventListener("click", closeTopic);
  $("tail-toggle").addEventListener("click", () => (tail ? stopTail() : startTail()));
  $("tail-clear").addEventListener("click", () => {
    $("tail-list").replaceChildren();
    $("tail-count").textContent = "";
    if (tail) tail.count = 0;
  });
  $("publish-form").addEventListener("submit", publish);
  for (const field of Object.keys(FIELDS)) $(FIELDS[field]).addEventListener("input", () => fieldError(field, ""));
  document.addEventListener("keydown", (event) => {
    // Escape closes the topic view from inside it (or from nowhere in particular).
    const inside = $("topic").contains(event.target) || event.target === document.body;
    if (event.key === "Escape" && selected && inside) closeTopic();
  });
  window.addEventListener("resize", () => CARDS.forEach((card) => draw(card.canvas, card.samples)));
  boot();
})();
