// realmqa's page: ask /answer or /retrieve and show the result. Every text from the server is inserted as a
// text node (Node.append with strings, textContent), never as HTML: block texts are user data.
"use strict";

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

// start_char/end_char count code points (Python str indices); JavaScript strings count UTF-16 units.
function highlighted(text, start, end) {
  const cp = Array.from(text);
  return el("p", { class: "block-text" },
    cp.slice(0, start).join(""), el("mark", {}, cp.slice(start, end).join("")), cp.slice(end).join(""));
}

const fmt = (x, digits) => Number(x).toFixed(digits);

function blockHeading(block, extra) {
  return el("p", { class: "block-head" },
    el("span", { class: "title" }, block.title || block.id),
    ` · block ${block.id} · relevance score ${fmt(block.score, 3)}`, extra || "");
}

function timings(t, roundTripMs) {
  const parts = Object.entries(t || {}).map(([k, v]) => `${k.replace(/_ms$/, "")} ${fmt(v, 1)} ms`);
  parts.push(`round trip ${fmt(roundTripMs, 0)} ms`);
  return el("p", { class: "timings" }, "Timings: ", parts.join(" · "));
}

function servedBy(r) {
  return el("p", { class: "served-by" }, `model ${r.model} · index ${r.index}`);
}

function showAnswer(r, ms) {
  const best = el("article", { class: "answer", "aria-label": "Answer" },
    el("h2", {}, el("span", { class: "label" }, "Answer: "), el("span", { id: "answer-text" }, r.answer)),
    blockHeading(r.block, ` · score ${fmt(r.score, 2)}`),
    highlighted(r.block.text, r.start_char, r.end_char));
  const others = r.candidates.slice(1).map((c) =>
    el("li", {}, el("details", {},
      el("summary", {}, el("strong", {}, c.answer), ` — ${c.block.title || c.block.id} (score ${fmt(c.score, 2)})`),
      blockHeading(c.block),
      highlighted(c.block.text, c.start_char, c.end_char))));
  const list = others.length
    ? [el("h3", {}, "Other candidates (best span per block read)"), el("ol", { class: "candidates" }, ...others)]
    : [];
  $("result").replaceChildren(best, ...list, timings(r.timings_ms, ms), servedBy(r));
}

function showBlocks(r, ms) {
  const items = r.blocks.map((b) =>
    el("li", { class: "block" }, blockHeading(b), el("p", { class: "block-text" }, b.text)));
  $("result").replaceChildren(
    el("h2", {}, `${r.blocks.length} blocks by relevance score`),
    el("ol", { class: "blocks" }, ...items), timings({}, ms), servedBy(r));
}

// The error shape {"error": {"type", "message", "param"}}; anything else (a proxy's page) by its status.
async function showError(resp) {
  let text = `${resp.status} ${resp.statusText}`;
  try {
    const e = (await resp.json()).error;
    text = `${resp.status} ${e.type}: ${e.message}` + (e.param ? ` (field: ${e.param})` : "");
  } catch (_) { /* not JSON: keep the status line */ }
  const hints = {
    429: "The service is busy" + (resp.headers.get("Retry-After") ? `; retry after ${resp.headers.get("Retry-After")} s.` : "."),
    504: "The answer took longer than the deadline.",
  };
  const rid = resp.headers.get("X-Request-ID");
  $("error").replaceChildren(el("p", { class: "message" }, text),
    hints[resp.status] ? el("p", {}, hints[resp.status]) : null,
    rid ? el("p", { class: "request-id" }, `request id ${rid}`) : null);
  $("error").hidden = false;
  $("result").replaceChildren();
}

let inFlight = null;

async function ask(event) {
  event.preventDefault();
  const question = $("question").value;
  const retrieve = document.querySelector("input[name=mode]:checked").value === "retrieve";
  const k = parseInt($("k").value, 10);
  const body = retrieve ? { query: question } : { question };
  if (Number.isFinite(k)) {
    body[retrieve ? "k" : "reader_beam_size"] = k;
  }
  if ($("model").value) {
    body.model = $("model").value;
  }
  if (inFlight) inFlight.abort();
  const ctl = inFlight = new AbortController();
  $("error").hidden = true;
  $("status").textContent = retrieve ? "Retrieving…" : "Asking…";
  const t0 = performance.now();
  try {
    const resp = await fetch(retrieve ? "/retrieve" : "/answer", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      signal: ctl.signal,
    });
    const ms = performance.now() - t0;
    if (!resp.ok) {
      await showError(resp);
      $("status").textContent = "";
      return;
    }
    const r = await resp.json();
    (retrieve ? showBlocks : showAnswer)(r, ms);
    $("status").textContent = "";
  } catch (e) {
    if (e.name === "AbortError") return;
    $("error").replaceChildren(el("p", { class: "message" }, `Cannot reach the service: ${e.message}`));
    $("error").hidden = false;
    $("status").textContent = "";
  } finally {
    if (inFlight === ctl) inFlight = null;
  }
}

// The served models from /v1/models: the header line and the model picker.
async function loadModels() {
  try {
    const resp = await fetch("/v1/models");
    if (!resp.ok) throw new Error(`${resp.status}`);
    const models = (await resp.json()).models;
    const ready = [];
    for (const m of models) {
      for (const v of m.versions) {
        if (v.state === "ready") ready.push({ ref: `${m.name}/${v.version}`, index: v.index, dflt: m.default });
      }
    }
    const dflt = ready.filter((r) => r.dflt).map((r) => `${r.ref} on index ${r.index}`);
    $("served").textContent = ready.length
      ? `Serving ${dflt.length ? dflt.join(", ") + " (default)" : ready[0].ref}` +
        (ready.length > Math.max(dflt.length, 1) ? ` and ${ready.length - Math.max(dflt.length, 1)} more` : "")
      : "No model is ready.";
    $("model").append(...ready.map((r) => el("option", { value: r.ref }, `${r.ref} (index ${r.index})`)));
  } catch (e) {
    $("served").textContent = `Could not list the models (${e.message}).`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", ask);
  loadModels();
});
