// The UniAD training dashboard: one run's stages, curves and findings, or the list of runs.
// Data comes from {base}/api/...; every value is inserted as text (never as HTML).
"use strict";

const BASE = document.body.dataset.base;
const REFRESH_MS = 10000;
const COLORS = ["#2b6cb0", "#dd6b20", "#2f855a", "#b83280", "#6b46c1", "#c53030", "#319795", "#718096"];
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${s % 60}s` : `${s}s`;
}

function num(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 1e-3 || value === 0 ? Number(value.toPrecision(digits)).toString() : value.toExponential(2);
}

const badge = (text) => el("span", { class: `badge ${text || ""}` }, text || "not started");

async function getJSON(path) {
  const response = await fetch(`${BASE}/api/${path}`, { credentials: "same-origin" });
  if (response.status === 401 || response.status === 403) {
    location.reload(); // the page route sends an expired session to Airflow's login
    throw new Error("not signed in");
  }
  if (!response.ok) throw new Error(`${response.status}: ${(await response.json()).detail || response.statusText}`);
  return response.json();
}

// ---- charts -------------------------------------------------------------------------------------------------

// series: [{name, points: [[x, y, label]]}]; opts: {log, vlines: [{x, label, strong}]}
function lineChart(title, series, opts = {}) {
  const W = 640, H = 260, L = 58, R = 12, T = 10, B = 30;
  const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && (!opts.log || p[1] > 0));
  const box = el("div", { class: "chart", "data-chart": title });
  box.append(el("div", { class: "title" }, title));
  if (!all.length) {
    box.append(el("p", { class: "muted" }, "no values yet"));
    return box;
  }
  const tx = (v) => (opts.log ? Math.log10(v) : v);
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => tx(p[1]))), y1 = Math.max(...all.map((p) => tx(p[1])));
  for (const line of opts.vlines || []) x1 = Math.max(x1, line.x);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (tx(y) - y0) / (y1 - y0)) * (H - T - B);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (let k = 0; k <= 4; k++) {
    const yv = y0 + ((y1 - y0) * k) / 4, y = T + (1 - k / 4) * (H - T - B);
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#edf2f7" }));
    svg.append(el("svg:text", { x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#616e7c" },
      num(opts.log ? 10 ** yv : yv, 3)));
  }
  for (let k = 0; k <= 4; k++) {
    const xv = x0 + ((x1 - x0) * k) / 4;
    svg.append(el("svg:text", { x: sx(xv), y: H - 10, "text-anchor": "middle", "font-size": 11, fill: "#616e7c" },
      Math.round(xv)));
  }
  for (const line of opts.vlines || []) {
    svg.append(el("svg:line", {
      x1: sx(line.x), x2: sx(line.x), y1: T, y2: H - B, class: line.strong ? "handoff" : "epoch-boundary",
      stroke: line.strong ? "#c53030" : "#a0aec0", "stroke-dasharray": line.strong ? "6 3" : "3 3",
      "stroke-width": line.strong ? 1.6 : 0.8,
    }));
    if (line.strong) {
      svg.append(el("svg:text", { x: sx(line.x) + 4, y: T + 12, "font-size": 11, fill: "#c53030" }, line.label));
    }
  }
  series.forEach((s, i) => {
    let d = "", pen = "M";
    for (const [x, y] of s.points) {
      if (y === null || (opts.log && y <= 0)) { pen = "M"; continue; } // a gap where the value was not finite
      d += `${pen}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
      pen = "L";
    }
    svg.append(el("svg:path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.5,
      class: "series", "data-series": s.name }));
    // Evaluations are few (one per evaluated epoch): mark each, so a single one shows too.
    if (opts.markers) {
      for (const [x, y] of s.points.filter((p) => p[1] !== null)) {
        svg.append(el("svg:circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3.5,
          fill: COLORS[i % COLORS.length], class: "marker" }));
      }
    }
  });
  const cursor = el("svg:line", { y1: T, y2: H - B, stroke: "#1f2933", "stroke-width": 0.6, visibility: "hidden" });
  svg.append(cursor);
  const tip = el("div", { class: "tip" });
  svg.addEventListener("mousemove", (event) => {
    const rect = svg.getBoundingClientRect();
    const x = x0 + (((event.clientX - rect.left) / rect.width) * W - L) / (W - L - R) * (x1 - x0);
    const lines = [];
    let at = null;
    for (const s of series) {
      let best = null;
      for (const p of s.points) if (p[1] !== null && (!best || Math.abs(p[0] - x) < Math.abs(best[0] - x))) best = p;
      if (best) { lines.push(`${s.name}: ${num(best[1])}`); at = at || best; }
    }
    if (!at) return;
    cursor.setAttribute("x1", sx(at[0])); cursor.setAttribute("x2", sx(at[0])); cursor.setAttribute("visibility", "visible");
    tip.textContent = `${at[2]}\n${lines.join("\n")}`;
    tip.style.display = "block";
    tip.style.left = `${Math.min(event.clientX - box.getBoundingClientRect().left + 12, box.clientWidth - 160)}px`;
    tip.style.top = `${event.clientY - box.getBoundingClientRect().top + 12}px`;
  });
  svg.addEventListener("mouseleave", () => { tip.style.display = "none"; cursor.setAttribute("visibility", "hidden"); });
  box.append(svg, tip);
  if (series.length > 1 || opts.legend) {
    box.append(el("div", { class: "legend" }, series.map((s, i) =>
      el("span", {}, el("i", { style: `background:${COLORS[i % COLORS.length]}` }), s.name))));
  }
  return box;
}

function charts(view) {
  const stages = view.stages.filter((s) => s.series);
  const vlines = [];
  for (const s of stages) for (const x of s.series.epoch_starts) vlines.push({ x: s.x_offset + x });
  if (view.handoff_x !== null && view.stages[1].max_epochs) {
    vlines.push({ x: view.handoff_x, strong: true, label: "stage 2: load_from full_track_map.pth" });
  }
  // One line per key across both stages, broken at the hand-off (a null point is a gap).
  const merge = (key, group) => ({
    name: key,
    points: stages.flatMap((s, k) => [
      ...(k ? [[s.x_offset, null, ""]] : []),
      ...s.series.x.map((x, i) => [s.x_offset + x, (group ? s.series.groups[key] || [] : s.series[key])[i] ?? null,
        `${s.stage} epoch ${s.series.epoch[i]} iter ${s.series.iter[i]}`]),
    ]),
  });
  const groupNames = [...new Set(stages.flatMap((s) => Object.keys(s.series.groups)))];
  return el("div", { class: "charts" },
    lineChart("total loss", [merge("loss")], { vlines }),
    lineChart("loss by task group", groupNames.map((g) => merge(g, true)), { vlines }),
    lineChart("grad_norm (before clipping)", [merge("grad_norm")], { vlines }),
    lineChart("learning rate (log scale)", [merge("lr")], { vlines, log: true }));
}

// ---- run page -----------------------------------------------------------------------------------------------

function stageCard(s) {
  const title = el("h3", {}, s.stage === "stage1" ? "Stage 1: track + map" : "Stage 2: end to end",
    badge(s.task_state), s.verdict ? badge(s.verdict) : null);
  const card = el("div", { class: "card", "data-stage": s.stage }, title);
  if (!s.records) {
    const job = (s.slurm_jobs || [])[s.slurm_jobs.length - 1];
    card.append(el("p", { class: "muted" }, `${s.max_epochs} epoch(s) on ${s.nproc} process(es); `
      + (job ? `Slurm job ${job.job_id}: ${job.state}. ` : "")
      + (s.started ? "launched, waiting for the first log record." : "no log yet.")));
    return card;
  }
  const pct = Math.round((s.progress || 0) * 1000) / 10;
  card.append(el("div", { class: "bar" }, el("div", { style: `width:${pct}%` })));
  card.append(el("dl", { class: "kv" },
    el("dt", {}, "progress"), el("dd", { class: "progress" },
      `epoch ${s.epoch}/${s.max_epochs}, iter ${s.iter}/${s.iters_per_epoch ?? "?"} (${pct}%)`),
    el("dt", {}, "loss"), el("dd", {}, `${num(s.loss.first)} → ${num(s.loss.latest)}`),
    el("dt", {}, "elapsed"), el("dd", {}, duration(s.elapsed_s) + (s.attempts > 1 ? ` over ${s.attempts} attempts` : "")),
    el("dt", {}, "ETA"), el("dd", { class: "eta" }, s.eta_s !== null ? duration(s.eta_s) : (pct >= 100 ? "done" : "–")),
    el("dt", {}, "GPU-hours"), el("dd", { class: "gpu-hours" }, `${num(s.gpu_hours, 3)} (${s.nproc} process(es))`),
    el("dt", {}, "last checkpoint"), el("dd", { class: "checkpoint" }, s.checkpoint
      ? `${s.checkpoint.file}; a crash now loses ${s.checkpoint.at_risk_iters} iteration(s)`
        + (s.checkpoint.at_risk_s !== null ? ` (~${duration(s.checkpoint.at_risk_s)})` : "")
      : "none yet: a crash now restarts the stage"),
    el("dt", {}, "health gate"), el("dd", {}, s.gate ? badge(s.gate.verdict) : "not run yet",
      s.gate ? el("div", { class: "mono muted" }, s.gate.report) : null),
    el("dt", {}, "work dir"), el("dd", { class: "mono" }, s.dir)));
  const job = (s.slurm_jobs || [])[s.slurm_jobs.length - 1];
  if (job) {
    card.append(el("dl", { class: "kv slurm" },
      el("dt", {}, "executor"), el("dd", {}, `slurm, ${s.slurm_jobs.length} job(s)`),
      el("dt", {}, "job"), el("dd", { class: "mono" }, `${job.job_id} (attempt ${job.attempt}): ${job.state}`
        + (job.restarts ? `, started ${job.restarts + 1} times (requeued)` : "")),
      el("dt", {}, "nodes"), el("dd", { class: "mono" }, job.nodes || `${job.nnodes} requested`),
      el("dt", {}, "segments"), el("dd", { class: "mono segments" }, s.slurm_jobs.map((j) => `${j.job_id} ${j.state}`
        + (j.restarts ? ` x${j.restarts + 1}` : "")
        + (j.resume_from ? ` from ${j.resume_from.split("/").pop()}` : "")).join("; "))));
  }
  return card;
}

function findingsTable(view) {
  const rows = view.stages.flatMap((s) => (s.findings || []).map((f) => ({ stage: s.stage, ...f })));
  if (!rows.length) return el("p", { class: "muted" }, "No findings.");
  const order = { error: 0, warning: 1, info: 2 };
  rows.sort((a, b) => order[a.severity] - order[b.severity]);
  return el("table", { id: "findings" },
    el("thead", {}, el("tr", {}, ["severity", "stage", "code", "where", "message"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((f) => el("tr", { class: `finding ${f.severity}` },
      el("td", {}, badge(f.severity)), el("td", {}, f.stage), el("td", { class: "mono" }, f.code),
      el("td", {}, f.epoch !== null ? `epoch ${f.epoch} iter ${f.iter}` : "whole stage"), el("td", {}, f.message)))));
}

function metricsSection(view) {
  const stages = view.stages.filter((s) => (s.evaluations || []).length);
  if (!stages.length) return [el("p", { class: "muted", id: "metrics" }, "No evaluation yet.")];
  const parts = [];
  for (const s of stages) {
    const last = s.evaluations[s.evaluations.length - 1];
    const names = [...s.headline.filter((m) => m in last.values),
      ...Object.keys(last.values).filter((m) => !s.headline.includes(m))];
    const epochs = s.evaluations.map((e) => e.epoch);
    const head = ["metric", ...epochs.map((e) => `epoch ${e}`), ...(s.references ? ["UniAD reference"] : [])];
    parts.push(el("h3", {}, s.stage === "stage1" ? "Stage 1" : "Stage 2"), el("table", { class: "metrics", "data-stage": s.stage },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, names.map((m) => el("tr", { class: s.headline.includes(m) ? "headline" : "" },
        el("td", { class: "mono" }, m), s.evaluations.map((e) => el("td", {}, num(e.values[m] ?? null))),
        s.references ? el("td", {}, m in s.references ? num(s.references[m]) : "–") : null)))));
    const curves = s.headline.filter((m) => s.evaluations.some((e) => e.values[m] !== undefined && e.values[m] !== null));
    parts.push(el("div", { class: "charts" }, curves.map((m) => lineChart(`${s.stage}: ${m}`,
      [{ name: m, points: s.evaluations.map((e) => [e.epoch, e.values[m] ?? null, `epoch ${e.epoch}`]) }],
      { vlines: [], markers: true }))));
  }
  return parts;
}

function publishedCard(view) {
  const p = view.published;
  if (!p) return el("p", { class: "muted", id: "published" }, "Not published yet.");
  return el("div", { class: "card", id: "published" }, el("dl", { class: "kv" },
    el("dt", {}, "decision"), el("dd", {}, p.published ? "published" : "kept the champion"),
    el("dt", {}, "comparison"), el("dd", { class: "comparison" }, p.comparison),
    el("dt", {}, "model"), el("dd", { class: "mono" }, p.champion ? p.champion.path || "" : ""),
    el("dt", {}, "sha256"), el("dd", { class: "mono" }, p.champion ? p.champion.sha256 || "" : "")));
}

function promotedCard(view) {
  const p = view.promoted;
  if (!p) return el("p", { class: "muted", id: "promoted" }, `Not promoted yet (target ${view.ckpt_path}).`);
  return el("div", { class: "card", id: "promoted" }, el("dl", { class: "kv" },
    el("dt", {}, "path"), el("dd", { class: "mono" }, p.path),
    el("dt", {}, "sha256"), el("dd", { class: "mono sha256" }, p.sha256),
    el("dt", {}, "epoch / iter"), el("dd", {}, `${p.epoch} / ${p.iter}`),
    el("dt", {}, "from"), el("dd", { class: "mono" }, p.source_resolved),
    el("dt", {}, "promoted at"), el("dd", {}, p.promoted_at)));
}

async function showRun(runId) {
  const content = document.getElementById("content");
  let detail;
  try {
    detail = await getJSON(`runs/${encodeURIComponent(runId)}`);
  } catch (error) {
    content.replaceChildren(el("p", { class: "note" }, `Could not load run ${runId}: ${error.message}. This page `
      + "shows runs of uniad_e2e_training."), el("a", { href: `${BASE}/` }, "All runs"));
    return;
  }
  const run = detail.run, view = detail.view;
  document.getElementById("title").replaceChildren("UniAD training: ", el("span", { class: "mono" }, run.run_id), " ",
    badge(run.state));
  document.getElementById("subtitle").replaceChildren(
    el("a", { href: `${BASE}/` }, "All runs"), " · ",
    el("a", { href: `/dags/uniad_e2e_training/runs/${encodeURIComponent(run.run_id)}`, target: "_top" }, "Run in Airflow"),
    view ? ` · profile ${view.profile} · ${view.uniad_root}` : "",
    ` · updated ${new Date().toLocaleTimeString()}`);
  const parts = [];
  if (detail.message) parts.push(el("p", { class: "note" }, detail.message));
  if (view) {
    parts.push(el("div", { class: "cards" }, view.stages.map(stageCard)));
    parts.push(el("p", { id: "totals" }, `Pipeline ETA: ${view.eta_s !== null ? duration(view.eta_s) : "–"} · `
      + `GPU-hours so far: ${num(view.gpu_hours, 3)}`));
    parts.push(el("h2", {}, "Curves"), el("p", { class: "muted" },
      "x: iteration across both stages; dashed grey: epoch boundaries; red: the hand-off to stage 2."), charts(view));
    parts.push(el("h2", {}, "Health findings"), findingsTable(view));
    parts.push(el("h2", {}, "Model quality"), el("p", { class: "muted" },
      "The evaluations the stages logged and printed (UniAD's metric names)."), ...metricsSection(view));
    parts.push(el("h2", {}, "Promoted checkpoint"), promotedCard(view));
    parts.push(el("h2", {}, "Published model (champion/challenger)"), publishedCard(view));
  }
  content.replaceChildren(...parts);
  if (!["success", "failed"].includes(run.state)) setTimeout(() => showRun(runId), REFRESH_MS);
}

// ---- run list and comparison --------------------------------------------------------------------------------

async function showRuns() {
  const content = document.getElementById("content");
  const runs = await getJSON("runs");
  if (!runs.length) {
    content.replaceChildren(el("p", { class: "note" }, "No runs of uniad_e2e_training yet: trigger it from the DAG page."));
    return;
  }
  const picked = [];
  const compare = el("button", { id: "compare", disabled: "" }, "Compare the two selected runs");
  compare.addEventListener("click", () => {
    location.href = `${BASE}/compare?a=${encodeURIComponent(picked[0])}&b=${encodeURIComponent(picked[1])}`;
  });
  const pick = (runId) => {
    const box = el("input", { type: "checkbox", class: "pick", "data-run": runId });
    box.addEventListener("change", () => {
      if (box.checked) picked.push(runId); else picked.splice(picked.indexOf(runId), 1);
      if (picked.length > 2) document.querySelector(`input.pick[data-run="${CSS.escape(picked.shift())}"]`).checked = false;
      compare.toggleAttribute("disabled", picked.length !== 2);
    });
    return box;
  };
  content.replaceChildren(
    el("p", { class: "muted" }, "★: the run whose model is the champion at its publish path now. Headline: the champion "
      + "metric of the run's final evaluation. Select two runs to overlay their curves. "), compare,
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["", "run", "state", "headline", "champion", "MLflow", "type", "started", "ended"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, runs.map((r) => el("tr", { class: "run", "data-run": r.run_id },
        el("td", {}, pick(r.run_id)),
        el("td", {}, el("a", { href: `${BASE}/runs/${encodeURIComponent(r.run_id)}`, class: "mono" }, r.run_id)),
        el("td", {}, badge(r.state)),
        el("td", { class: "headline" }, r.headline ? `${r.headline.metric} ${num(r.headline.value)}` : "–"),
        el("td", { class: "champion" }, r.champion ? "★" : ""),
        el("td", {}, r.mlflow_url ? el("a", { href: r.mlflow_url, class: "mlflow", target: "_blank" }, "run") : "–"),
        el("td", {}, r.run_type), el("td", {}, r.start_date || "–"),
        el("td", {}, r.end_date || "–"))))));
  // Refreshed while a run is active, until two runs are being picked.
  if (runs.some((r) => !["success", "failed"].includes(r.state))) {
    setTimeout(() => { if (!picked.length) showRuns(); }, REFRESH_MS);
  }
}

// Two runs' curves on one iteration axis (both stages), one line per run.
async function showComparison(a, b) {
  const content = document.getElementById("content");
  const details = await Promise.all([a, b].map((id) => getJSON(`runs/${encodeURIComponent(id)}`)));
  document.getElementById("title").replaceChildren("UniAD training: two runs");
  document.getElementById("subtitle").replaceChildren(el("a", { href: `${BASE}/` }, "All runs"));
  const line = (detail, key) => ({
    name: detail.run.run_id,
    points: (detail.view ? detail.view.stages.filter((s) => s.series) : []).flatMap((s, k) => [
      ...(k ? [[s.x_offset, null, ""]] : []),
      ...s.series.x.map((x, i) => [s.x_offset + x, s.series[key][i] ?? null,
        `${detail.run.run_id} ${s.stage} epoch ${s.series.epoch[i]} iter ${s.series.iter[i]}`]),
    ]),
  });
  content.replaceChildren(
    el("p", { class: "muted" }, "x: iteration across both stages. Each line is one run."),
    el("div", { class: "charts" },
      lineChart("total loss", details.map((d) => line(d, "loss"))),
      lineChart("grad_norm (before clipping)", details.map((d) => line(d, "grad_norm"))),
      lineChart("learning rate (log scale)", details.map((d) => line(d, "lr")), { log: true })));
}

const match = location.pathname.match(/\/runs\/([^/]+)\/?$/);
const query = new URLSearchParams(location.search);
if (match) showRun(decodeURIComponent(match[1]));
else if (location.pathname.endsWith("/compare") && query.get("a") && query.get("b")) showComparison(query.get("a"), query.get("b"));
else showRuns();
