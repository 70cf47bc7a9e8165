// loramem dashboard. Every value from the server is written with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "loramem-admin-key";
const TOPIC_PATTERN = /^[a-z0-9][a-z0-9._-]*$/;
const state = { selectedTopic: null, selectedJob: null, timer: null };

const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "";
    tr.appendChild(td);
  }
  return tr;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `request failed (${status})`);
    this.status = status;
    this.param = body && body.error && body.error.param;
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    showLogin(key ? "That key was refused: enter the admin key again." : null);
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function banner(message) {
  const node = $("#banner");
  node.hidden = !message;
  node.textContent = message || "";
}

function showLogin(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  clearInterval(state.timer);
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  banner(message);
}

function showApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = !sessionStorage.getItem(KEY_STORAGE);
  banner(null);
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, 2000);
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return new Date(iso).toLocaleString();
}

function recallCell(recall) {
  if (recall === null || recall === undefined) return el("span", "–");
  return el("span", `${Math.round(recall * 100)}%`, recall >= 0.9 ? "recall-high" : "recall-low");
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  return n > 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

async function refresh() {
  try {
    const [engine, topics, jobs, activity] = await Promise.all([
      api("/admin/engine").catch((error) => (error.status === 503 ? null : Promise.reject(error))),
      api("/admin/topics"),
      api("/admin/jobs?limit=20"),
      api("/admin/activity"),
    ]);
    renderEngine(engine);
    renderTopics(topics.topics);
    renderJobs(jobs.jobs);
    renderActivity(activity);
    if (state.selectedTopic) await renderTopicDetail(state.selectedTopic);
    if (state.selectedJob) await renderLossCurve(state.selectedJob);
    banner(null);
  } catch (error) {
    if (error.status !== 401) banner(`Cannot reach the server: ${error.message}`);
  }
}

function renderEngine(engine) {
  $("#engine").textContent = engine
    ? `engine ${engine.engine} · base ${engine.base_model} · resident adapters: ` +
      `${engine.adapters.length ? engine.adapters.join(", ") : "none"} · memory ${bytes(engine.memory_rss_bytes)}`
    : "engine starting…";
}

function renderTopics(topics) {
  const body = $("#topics tbody");
  body.replaceChildren();
  const select = $("#playground select[name=topic]");
  const chosen = select.value;
  select.replaceChildren(el("option", "(base model)"));
  select.firstChild.value = "";
  for (const topic of topics) {
    const name = el("span", topic.name);
    const forget = el("button", "delete", "danger small");
    forget.addEventListener("click", (event) => {
      event.stopPropagation();
      forgetTopic(topic.name);
    });
    const tr = row([
      name, topic.active_version ? `v${topic.active_version}` : "training…",
      recallCell(topic.active_recall), topic.versions, topic.modules,
      `${topic.documents} item${topic.documents === 1 ? "" : "s"}`, ago(topic.updated_at), forget,
    ]);
    tr.firstChild.className = "topic-name";
    tr.dataset.topic = topic.name;
    if (topic.name === state.selectedTopic) tr.className = "selected";
    tr.firstChild.addEventListener("click", () => {
      state.selectedTopic = topic.name;
      refresh();
    });
    body.appendChild(tr);
    const option = el("option", topic.name);
    option.value = topic.name;
    select.appendChild(option);
  }
  select.value = topics.some((t) => t.name === chosen) ? chosen : "";
  if (state.selectedTopic && !topics.some((t) => t.name === state.selectedTopic)) {
    state.selectedTopic = null;
    $("#topic-detail").hidden = true;
  }
}

async function renderTopicDetail(name) {
  const topic = await api(`/admin/topics/${encodeURIComponent(name)}`);
  $("#topic-detail").hidden = false;
  $("#detail-title").textContent = `${topic.name}: ${topic.documents.length} items of knowledge`;
  const documents = $("#documents");
  documents.replaceChildren();
  for (const doc of topic.documents.slice(0, 20)) {
    documents.appendChild(el("li", doc.kind === "qa" ? `${doc.question} → ${doc.answer}` : doc.text));
  }
  if (topic.documents.length > 20) documents.appendChild(el("li", `… ${topic.documents.length - 20} more`));
  const body = $("#versions tbody");
  body.replaceChildren();
  for (const version of topic.versions.slice().reverse()) {
    let action;
    if (version.active) action = el("span", "serving", "status succeeded");
    else {
      action = el("button", "activate", "small");
      action.addEventListener("click", () => activate(topic.name, version.version));
    }
    body.appendChild(row([
      `v${version.version}`, recallCell(version.recall), version.rank, bytes(version.size_bytes),
      ago(version.created_at), action,
    ]));
  }
}

function renderJobs(jobs) {
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const bar = el("span", null, "bar");
    const fill = el("div");
    fill.style.width = `${Math.round(job.progress * 100)}%`;
    bar.appendChild(fill);
    const progress = el("span");
    progress.append(bar, ` ${job.step}/${job.total_steps ?? "?"}`);
    const tr = row([
      job.id.slice(0, 8), job.topic, el("span", job.status, `status ${job.status}`), progress,
      job.loss === null ? "" : job.loss.toFixed(4), recallCell(job.recall),
      job.adapter_version ? `v${job.adapter_version}` : "", job.error || "",
    ]);
    tr.lastChild.className = "error";
    tr.dataset.job = job.id;
    tr.style.cursor = "pointer";
    if (job.id === state.selectedJob) tr.className = "selected";
    tr.addEventListener("click", () => {
      state.selectedJob = job.id;
      refresh();
    });
    body.appendChild(tr);
  }
}

async function renderLossCurve(jobId) {
  const events = (await api(`/jobs/${encodeURIComponent(jobId)}/events`)).events;
  const points = events.filter((e) => e.kind === "progress" && e.data.loss !== null)
    .map((e) => [e.data.step, e.data.loss]);
  $("#job-detail").hidden = false;
  $("#job-title").textContent = `loss of job ${jobId.slice(0, 8)}`;
  const svg = $("#loss-curve");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const label = (x, y, text) => {
    const node = document.createElementNS(ns, "text");
    node.setAttribute("x", x);
    node.setAttribute("y", y);
    node.textContent = text;
    svg.appendChild(node);
  };
  if (points.length < 2) {
    label(20, 100, "not enough progress yet");
    return;
  }
  const maxStep = Math.max(...points.map((p) => p[0]));
  const maxLoss = Math.max(...points.map((p) => p[1]));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map(([step, loss]) =>
    `${50 + (step / maxStep) * 930},${180 - (loss / maxLoss) * 160}`).join(" "));
  svg.appendChild(line);
  label(6, 24, maxLoss.toFixed(2));
  label(6, 184, "0");
  label(900, 196, `step ${maxStep}`);
}

function renderActivity(activity) {
  $("#status-counts").textContent = Object.entries(activity.by_status)
    .map(([status, count]) => `${status}: ${count}`).join(" · ") || "no requests yet";
  const body = $("#activity tbody");
  body.replaceChildren();
  for (const entry of activity.recent.slice(0, 12)) {
    body.appendChild(row([
      new Date(entry.at * 1000).toLocaleTimeString(), `${entry.method} ${entry.path}`,
      entry.status, entry.ms,
    ]));
  }
}

function formError(form, message) {
  form.querySelector(".form-error").textContent = message || "";
}

function parseQa(text) {
  const pairs = [];
  for (const [index, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const cut = line.indexOf("|");
    const question = cut === -1 ? "" : line.slice(0, cut).trim();
    const answer = cut === -1 ? "" : line.slice(cut + 1).trim();
    if (!question || !answer) throw new Error(`line ${index + 1}: write "question | answer"`);
    pairs.push({ question, answer });
  }
  return pairs;
}

async function memorize(event) {
  event.preventDefault();
  const form = event.target;
  formError(form, null);
  form.querySelector(".form-result").textContent = "";
  const topic = form.topic.value.trim();
  if (!topic || topic.length > 64 || !TOPIC_PATTERN.test(topic)) {
    formError(form, "topic: 1–64 characters of a–z, 0–9, '.', '_' or '-', starting with a letter or digit");
    return;
  }
  const body = { topic };
  try {
    const qa = parseQa(form.qa.value);
    if (qa.length) body.qa = qa;
  } catch (error) {
    formError(form, error.message);
    return;
  }
  if (form.text.value.trim()) body.text = form.text.value.trim();
  if (!body.qa && !body.text) {
    formError(form, "give question–answer pairs or a text");
    return;
  }
  try {
    const job = await api("/memorize", { method: "POST", body: JSON.stringify(body) });
    form.querySelector(".form-result").textContent = `queued job ${job.job_id.slice(0, 8)} for ${job.topic}`;
    state.selectedJob = job.job_id;
    form.qa.value = "";
    form.text.value = "";
    refresh();
  } catch (error) {
    formError(form, error.message);
  }
}

async function ask(event) {
  event.preventDefault();
  const form = event.target;
  formError(form, null);
  const prompt = form.prompt.value.trim();
  if (!prompt) {
    formError(form, "write a prompt");
    return;
  }
  const body = { prompt, mode: form.mode.value, max_tokens: Number(form.max_tokens.value) || 64 };
  if (form.topic.value) body.topic = form.topic.value;
  try {
    const answer = await api("/generate", { method: "POST", body: JSON.stringify(body) });
    $("#answer").hidden = false;
    $("#answer .answer-text").textContent = answer.text;
    const modules = answer.adapters.length
      ? answer.adapters.map((a) => `${a.topic} v${a.version} (score ${a.score})`).join(", ")
      : "none";
    $("#answer .answer-meta").textContent =
      `mode ${answer.mode} · modules: ${modules} · ${answer.usage.completion_tokens} tokens`;
  } catch (error) {
    formError(form, error.message);
  }
}

async function activate(topic, version) {
  try {
    await api(`/admin/topics/${encodeURIComponent(topic)}/activate`, {
      method: "POST", body: JSON.stringify({ version }),
    });
    refresh();
  } catch (error) {
    banner(error.message);
  }
}

async function forgetTopic(topic) {
  if (!window.confirm(`Forget topic "${topic}"? Its adapters and documents are deleted for good.`)) return;
  try {
    await api(`/admin/topics/${encodeURIComponent(topic)}`, { method: "DELETE" });
    if (state.selectedTopic === topic) state.selectedTopic = null;
    refresh();
  } catch (error) {
    banner(error.message);
  }
}

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("#key").value);
  $("#key").value = "";
  try {
    await api("/admin/topics");
    showApp();
  } catch (error) {
    if (error.status !== 401) banner(`Cannot reach the server: ${error.message}`);
  }
});
$("#logout").addEventListener("click", () => showLogin(null));
$("#memorize").addEventListener("submit", memorize);
$("#playground").addEventListener("submit", ask);

api("/admin/topics").then(showApp).catch((error) => {
  if (error.status !== 401) banner(`Cannot reach the server: ${error.message}`);
});
