// The storekeeper web page: browse, search, view, edit, upload, download and delete keys
// through the server's REST API, with live updates from /events. No build step, no
// dependencies. Keys are sent as one percent-encoded path segment ("/" as %2F), which the
// server decodes exactly once.
"use strict";

const NO_CHALLENGE = { "X-Storekeeper-No-Challenge": "1" }; // no browser login dialog
const TOKEN_KEY = "storekeeper-token";

const state = {
  prefix: "",          // the folder shown ("" or ending in "/")
  searching: null,     // the terms of the search shown, or null
  selected: null,      // the key in the details panel
  readOnly: false,
  token: sessionStorage.getItem(TOKEN_KEY),
  events: null,
  pendingLogin: null,  // resolves when the user has logged in
};

const $ = (id) => document.getElementById(id);

// -- requests -------------------------------------------------------------------------------
function keyUrl(key, part) {
  const path = "/store/" + encodeURIComponent(key);
  return part ? path + "/" + part : path;
}

function authHeaders() {
  const headers = { ...NO_CHALLENGE };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  return headers;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  let message = response.statusText || "HTTP " + response.status;
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
  } catch (ignored) { /* not JSON: keep the status text */ }
  return new HttpError(response.status, message);
}

// fetch with the credentials; a 401 asks the user to log in, then tries again.
async function call(url, options = {}) {
  for (;;) {
    const response = await fetch(url, {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
    });
    if (response.status !== 401) {
      if (!response.ok) throw await errorOf(response);
      return response;
    }
    await askLogin("Please log in.");
  }
}

async function callJson(url, options) {
  return (await call(url, options)).json();
}

// -- login ----------------------------------------------------------------------------------
function askLogin(message) {
  if (!state.pendingLogin) {
    state.pendingLogin = new Promise((resolve) => {
      const dialog = $("login-dialog");
      $("login-error").textContent = message || "";
      dialog.resolve = resolve;
      if (!dialog.open) dialog.showModal();
      $("login-user").focus();
    });
  }
  return state.pendingLogin;
}

async function submitLogin(event) {
  event.preventDefault();
  const user = $("login-user").value;
  const password = $("login-password").value;
  const basic = btoa(String.fromCharCode(...new TextEncoder().encode(user + ":" + password)));
  const response = await fetch("/login", {
    method: "POST",
    headers: { ...NO_CHALLENGE, Authorization: "Basic " + basic },
  });
  if (!response.ok) {
    $("login-error").textContent = (await errorOf(response)).message;
    $("login-password").select();
    return;
  }
  const answer = await response.json();
  setToken(answer.token);
  $("login-password").value = "";
  const dialog = $("login-dialog");
  dialog.close();
  const resolve = dialog.resolve;
  state.pendingLogin = null;
  if (resolve) resolve();
  await loadInfo();
  connectEvents();
}

function setToken(token) {
  state.token = token || null;
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

async function logout() {
  if (state.token) {
    await fetch("/login", { method: "DELETE", headers: authHeaders() }).catch(() => null);
  }
  setToken(null);
  if (state.events) state.events.close();
  $("entries").replaceChildren();
  closeDetails();
  await start();
}

async function loadInfo() {
  const info = await callJson("/info");
  state.readOnly = Boolean(info.read_only);
  document.body.classList.toggle("read-only", state.readOnly);
  $("user").textContent = info.user ? "Logged in as " + info.user : "";
  $("login-button").hidden = !info.auth || Boolean(info.user);
  $("logout-button").hidden = !info.auth || !info.user;
}

// -- browsing -------------------------------------------------------------------------------
function baseName(key) {
  const trimmed = key.endsWith("/") ? key.slice(0, -1) : key;
  return trimmed.slice(trimmed.lastIndexOf("/") + 1) || key;
}

function showCrumbs() {
  const crumbs = $("crumbs");
  const parts = [["/", ""]];
  let path = "";
  for (const segment of state.prefix.split("/").filter(Boolean)) {
    path += segment + "/";
    parts.push([segment + "/", path]);
  }
  crumbs.replaceChildren(...parts.map(([label, prefix], index) => {
    const link = document.createElement("a");
    link.href = "#" + encodeURIComponent(prefix);
    link.textContent = label;
    if (index === parts.length - 1) link.setAttribute("aria-current", "page");
    return link;
  }));
  $("drop-folder").textContent = "/" + state.prefix;
}

function entryItem(key, isFolder, metadata) {
  const item = document.createElement("li");
  item.className = isFolder ? "folder" : "key";
  item.dataset.key = key;
  const open = document.createElement(isFolder ? "a" : "button");
  open.className = "open";
  if (isFolder) {
    open.href = "#" + encodeURIComponent(key);
    open.textContent = baseName(key) + "/";
  } else {
    open.type = "button";
    open.textContent = state.searching ? key : baseName(key);
    open.addEventListener("click", () => showDetails(key));
  }
  item.append(open);
  if (metadata && Object.keys(metadata).length) {
    const summary = document.createElement("span");
    summary.className = "summary";
    summary.textContent = JSON.stringify(metadata);
    item.append(summary);
  }
  return item;
}

function showEntries(items, title) {
  $("listing-title").textContent = title;
  $("entries").replaceChildren(...items);
  $("empty").hidden = items.length > 0;
}

async function showFolder() {
  state.searching = null;
  $("clear-search").hidden = true;
  showCrumbs();
  const query = new URLSearchParams({ prefix: state.prefix, delimiter: "/" });
  const keys = parseListing(await (await call("/list?" + query)).text());
  const items = keys.map((key) => entryItem(key, key.endsWith("/") && key !== state.prefix));
  showEntries(items, "Folder /" + state.prefix);
}

// /list answers one JSON string per line (NDJSON); a JSON array is read too.
function parseListing(text) {
  if (text.trimStart().startsWith("[")) return JSON.parse(text);
  return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
}

function readTerms() {
  const where = {};
  for (const row of document.querySelectorAll("#terms .term")) {
    const name = row.querySelector("[name=name]").value.trim();
    const text = row.querySelector("[name=value]").value.trim();
    if (!name) continue;
    let value = text;
    try { value = JSON.parse(text); } catch (ignored) { /* a plain string */ }
    // An object would be read as a query term ($in, $range...): match it exactly.
    where[name] = value !== null && typeof value === "object" && !Array.isArray(value)
      ? { $eq: value } : value;
  }
  return where;
}

async function runSearch(where) {
  state.searching = where;
  $("clear-search").hidden = false;
  const pairs = await callJson("/query", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ where, select: null }),
  });
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const items = pairs.map(([key, metadata]) => entryItem(key, false, metadata));
  const count = items.length === 1 ? "1 key" : items.length + " keys";
  showEntries(items, "Search results: " + count);
}

async function refresh() {
  try {
    if (state.searching) await runSearch(state.searching);
    else await showFolder();
  } catch (error) {
    report(error);
  }
}

function goToHash() {
  let prefix = "";
  try { prefix = decodeURIComponent(location.hash.slice(1)); } catch (ignored) { /* bad hash */ }
  state.prefix = prefix;
  refresh();
}

// -- one key --------------------------------------------------------------------------------
async function showDetails(key) {
  state.selected = key;
  const panel = $("details");
  $("details-title").textContent = baseName(key);
  $("details-key").textContent = key;
  $("details-changed").hidden = true;
  try {
    const [metadata, head] = await Promise.all([
      callJson(keyUrl(key, "metadata")),
      call(keyUrl(key, "data"), { method: "HEAD" }),
    ]);
    $("metadata").value = JSON.stringify(metadata, null, 2);
    $("details-size").textContent = formatSize(head.headers.get("Content-Length"));
    $("details-modified").textContent = head.headers.get("Last-Modified") || "?";
    const download = $("download");
    const token = state.token ? "?access_token=" + encodeURIComponent(state.token) : "";
    download.href = keyUrl(key, "data") + token;
    download.setAttribute("download", baseName(key));
    panel.hidden = false;
    $("metadata").focus();
  } catch (error) {
    report(error);
  }
}

function closeDetails() {
  state.selected = null;
  $("details").hidden = true;
}

function formatSize(text) {
  if (text === null) return "?";
  const bytes = Number(text);
  if (bytes < 1024) return bytes + " bytes";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return value.toFixed(1) + " " + units[unit] + " (" + bytes + " bytes)";
}

async function saveMetadata(event) {
  event.preventDefault();
  const key = state.selected;
  let metadata;
  try {
    metadata = JSON.parse($("metadata").value);
  } catch (error) {
    report(new Error("The metadata is not valid JSON: " + error.message));
    return;
  }
  if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
    report(new Error("The metadata must be a JSON object: {\"name\": value, ...}"));
    return;
  }
  try {
    await call(keyUrl(key, "metadata"), {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(metadata),
    });
    $("details-changed").hidden = true;
    say("Saved the metadata of " + key + ".");
  } catch (error) {
    report(error);
  }
}

async function confirmDelete() {
  const key = state.selected;
  const dialog = $("confirm-dialog");
  $("confirm-key").textContent = key;
  dialog.returnValue = "";
  dialog.showModal();
  const answer = await new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
  });
  if (answer !== "delete") return;
  try {
    await call(keyUrl(key), { method: "DELETE" });
    closeDetails();
    say("Deleted " + key + ".");
    refresh();
  } catch (error) {
    report(error);
  }
}

// -- uploads --------------------------------------------------------------------------------
// XMLHttpRequest, not fetch: only it reports upload progress.
function upload(key, file) {
  const item = document.createElement("li");
  const label = document.createElement("span");
  label.textContent = key;
  const bar = document.createElement("progress");
  bar.max = file.size || 1;
  bar.value = 0;
  bar.setAttribute("aria-label", "Uploading " + key);
  item.append(label, bar);
  $("uploads").append(item);
  return new Promise((resolve, reject) => {
    const send = () => {
      const request = new XMLHttpRequest();
      request.open("PUT", keyUrl(key, "data"));
      for (const [name, value] of Object.entries(authHeaders())) {
        request.setRequestHeader(name, value);
      }
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) { bar.max = event.total; bar.value = event.loaded; }
      });
      request.addEventListener("load", async () => {
        if (request.status === 401) {
          await askLogin("Please log in to upload.");
          send();
        } else if (request.status >= 200 && request.status < 300) {
          bar.value = bar.max;
          item.classList.add("done");
          label.textContent = key + " uploaded";
          resolve();
        } else {
          item.classList.add("failed");
          let message = "HTTP " + request.status;
          try { message = JSON.parse(request.responseText).message || message; } catch (e) { /* */ }
          label.textContent = key + ": " + message;
          reject(new HttpError(request.status, message));
        }
      });
      request.addEventListener("error", () => {
        item.classList.add("failed");
        label.textContent = key + ": the upload failed";
        reject(new Error("the upload of " + key + " failed"));
      });
      request.send(file);
    };
    send();
  });
}

async function uploadFiles(files, keyFor) {
  const jobs = Array.from(files, (file) => upload(keyFor(file), file));
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((result) => result.status === "rejected");
  if (failed.length) report(failed[0].reason);
  else say("Uploaded " + jobs.length + (jobs.length === 1 ? " file." : " files."));
  refresh();
}

function setUpDrop() {
  const zone = $("drop");
  const toggle = (on) => (event) => { event.preventDefault(); zone.classList.toggle("over", on); };
  zone.addEventListener("dragenter", toggle(true));
  zone.addEventListener("dragover", toggle(true));
  zone.addEventListener("dragleave", toggle(false));
  zone.addEventListener("drop", (event) => {
    toggle(false)(event);
    if (state.readOnly) return;
    uploadFiles(event.dataTransfer.files, (file) => state.prefix + file.name);
  });
  $("file-input").addEventListener("change", (event) => {
    uploadFiles(event.target.files, (file) => state.prefix + file.name);
    event.target.value = "";
  });
  $("replace-input").addEventListener("change", (event) => {
    const key = state.selected;
    uploadFiles(event.target.files, () => key).then(() => showDetails(key));
    event.target.value = "";
  });
}

// -- live updates ---------------------------------------------------------------------------
let refreshTimer = null;

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 150);
}

function connectEvents() {
  if (state.events) state.events.close();
  const token = state.token ? "?access_token=" + encodeURIComponent(state.token) : "";
  const source = new EventSource("/events" + token);
  state.events = source;
  const live = $("live");
  source.addEventListener("open", () => { live.textContent = "live"; live.classList.add("on"); });
  source.addEventListener("error", () => { live.textContent = "offline"; live.classList.remove("on"); });
  source.addEventListener("reset", refreshSoon);
  source.addEventListener("message", (event) => {
    let change;
    try { change = JSON.parse(event.data); } catch (ignored) { return; }
    if (state.searching || (change.key || "").startsWith(state.prefix)) refreshSoon();
    if (change.key === state.selected) {
      if (change.type === "delete") {
        closeDetails();
        say(change.key + " was deleted on the server.");
      } else {
        $("details-changed").hidden = false;
      }
    }
  });
}

// -- messages -------------------------------------------------------------------------------
function say(text) {
  const status = $("status");
  status.classList.remove("error");
  status.textContent = text;
}

function report(error) {
  const status = $("status");
  status.classList.add("error");
  status.textContent = error && error.message ? error.message : String(error);
}

// -- start ----------------------------------------------------------------------------------
async function start() {
  try {
    await loadInfo();
  } catch (error) {
    report(error);
    return;
  }
  connectEvents();
  goToHash();
}

function addTermRow() {
  const row = document.querySelector("#terms .term").cloneNode(true);
  for (const input of row.querySelectorAll("input")) input.value = "";
  $("terms").append(row);
  row.querySelector("input").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", () => { closeDetails(); goToHash(); });
  $("home").addEventListener("click", (event) => {
    event.preventDefault();
    location.hash = "";
    goToHash();
  });
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(readTerms()).catch(report);
  });
  $("add-term").addEventListener("click", addTermRow);
  $("clear-search").addEventListener("click", () => { state.searching = null; refresh(); });
  $("metadata-form").addEventListener("submit", saveMetadata);
  $("delete").addEventListener("click", confirmDelete);
  $("close-details").addEventListener("click", closeDetails);
  $("details-reload").addEventListener("click", () => showDetails(state.selected));
  $("login-form").addEventListener("submit", (event) => { submitLogin(event).catch(report); });
  $("login-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("login-button").addEventListener("click", () => askLogin("").then(refresh));
  $("logout-button").addEventListener("click", () => { logout().catch(report); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("details").hidden && !document.querySelector("dialog[open]")) {
      closeDetails();
    }
  });
  setUpDrop();
  start();
});
