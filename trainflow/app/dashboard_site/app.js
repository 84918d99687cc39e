// trainflow dashboard: every panel is one SQL query run by DuckDB-WASM over the Parquet records
// that `trainflow dashboard` copied next to this page (data/manifest.json lists them).
import * as duckdb from "./vendor/duckdb.mjs";

const $ = (id) => document.getElementById(id);
let conn = null;
let manifest = null;
const drawn = {};

// --- small helpers ------------------------------------------------------------------------------

function plain(value) {
  return typeof value === "bigint" ? Number(value) : value;
}

// Numbers as the CLI prints them (Python's "{:.6g}"); missing values as a dash.
function fmt(value) {
  if (value === null || value === undefined) {
    return "–";
  }
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  }
  return String(value);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function table(columns, rows, caption) {
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c)));
  const body = rows.map((r) =>
    el("tr", {}, ...columns.map((c) => el("td", typeof r[c] === "number" ? { class: "num" } : {}, fmt(r[c])))),
  );
  const t = el("table", { "data-panel-table": caption || "" }, el("thead", {}, head), el("tbody", {}, ...body));
  if (caption) {
    t.prepend(el("caption", {}, caption));
  }
  return t;
}

function note(body, text, kind = "note") {
  body.append(el("div", { class: kind }, text));
}

async function query(sql, ...params) {
  const statement = await conn.prepare(sql);
  try {
    const result = await statement.query(...params);
    return result.toArray().map((row) => {
      const out = row.toJSON();
      for (const key of Object.keys(out)) {
        out[key] = plain(out[key]);
      }
      return out;
    });
  } finally {
    await statement.close();
  }
}

function missing(kind) {
  return manifest.files[kind].length === 0;
}

function whereMissing(kind) {
  return `No ${kind} records in ${manifest.artifact_root}/_records/${kind} (${manifest.producers[kind]}).`;
}

// Rows of records written before the schema_version column (version 1) read NULL there.
function olderNote(body, kind, count) {
  if (count > 0) {
    note(body, `${count} ${kind} row(s) come from records of an older schema (version 1): columns they lack show as –.`);
  }
}

// The note a panel draws instead of its tables: no records of `kind` (or `absent`, when given),
// or nothing of `what` ("run", "package") selected. True when it drew one.
function unavailable(body, kind, selected, what, absent) {
  if (missing(kind)) {
    note(body, absent || whereMissing(kind));
    return true;
  }
  if (!selected) {
    note(body, `No ${what} matches the filters.`);
    return true;
  }
  return false;
}

// --- filters --------------------------------------------------------------------------------------

function filters() {
  return { model: $("f-model").value, from: $("f-from").value, to: $("f-to").value };
}

// "model_name = ? and the date of `column` within [from, to]" (empty filter values match all).
function filterSql(column) {
  return `(? = '' OR model_name = ?) AND (? = '' OR substr(${column}, 1, 10) >= ?) AND (? = '' OR substr(${column}, 1, 10) <= ?)`;
}

function filterParams() {
  const f = filters();
  return [f.model, f.model, f.from, f.from, f.to, f.to];
}

function fillSelect(select, options, keep) {
  const before = keep ? select.value : "";
  select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
  if (options.some(([value]) => value === before)) {
    select.value = before;
  }
}

async function fillFilters(first) {
  if (first) {
    const models = await query(
      "SELECT DISTINCT model_name FROM (SELECT model_name FROM runs UNION ALL SELECT model_name FROM packages) ORDER BY 1",
    );
    fillSelect($("f-model"), [["", "all"], ...models.map((m) => [m.model_name, m.model_name])], false);
  }
  const runs = await query(
    `SELECT run_key, model_name, status, started_at FROM runs WHERE ${filterSql("started_at")} ORDER BY started_at DESC NULLS LAST`,
    ...filterParams(),
  );
  fillSelect($("f-run"), runs.map((r) => [r.run_key, `${r.run_key} · ${r.model_name} · ${r.status}`]), !first);
  const packages = await query(
    `SELECT model_name, version FROM packages WHERE ${filterSql("created_at")} ORDER BY created_at DESC`,
    ...filterParams(),
  );
  fillSelect($("f-package"), packages.map((p) => [JSON.stringify([p.model_name, p.version]), `${p.model_name} ${p.version}`]), !first);
}

function selectedPackage() {
  const value = $("f-package").value;
  return value ? JSON.parse(value) : null;
}

// --- panels ---------------------------------------------------------------------------------------

const LEADERBOARD = `
SELECT task, coalesce(labels, '?') AS labels, dataset_version, metric, model_name, version,
       round(coalesce(test_metric, CASE WHEN metric = 'accuracy' THEN test_accuracy END), 4) AS test,
       round(coalesce(int8_metric, CASE WHEN metric = 'accuracy' THEN int8_accuracy END), 4) AS int8,
       round(coalesce(baseline_metric, CASE WHEN metric = 'accuracy' THEN majority_baseline_accuracy END), 4) AS baseline,
       round(val_metric, 4) AS val_metric, n_trials, created_at, schema_version
FROM packages WHERE ${filterSql("created_at")}`;

async function leaderboard(body) {
  if (missing("packages")) {
    return note(body, whereMissing("packages"));
  }
  const rows = await query(LEADERBOARD, ...filterParams());
  if (rows.length === 0) {
    return note(body, "No package matches the filters.");
  }
  const groups = new Map();
  for (const r of rows) {
    const key = JSON.stringify([r.task, r.labels, String(r.dataset_version), r.metric]);
    if (!groups.has(key)) {
      groups.set(key, []);
    }
    groups.get(key).push(r);
  }
  for (const key of [...groups.keys()].sort()) {
    const [task, labels, dataset, metric] = JSON.parse(key);
    const higher = (manifest.directions[metric] || "maximize") === "maximize";
    // Best first; ties: newest first; packages without the metric last (as `trainflow leaderboard`).
    const ranked = groups
      .get(key)
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)))
      .sort((a, b) => {
        if ((a.test === null) !== (b.test === null)) {
          return a.test === null ? 1 : -1;
        }
        return higher ? (b.test || 0) - (a.test || 0) : (a.test || 0) - (b.test || 0);
      })
      .map((r, i) => ({ "#": i + 1, ...r }));
    const shown = labels !== "?" ? JSON.parse(labels).join(", ") : "labels not recorded";
    const title = `${task} [${shown}] · dataset ${dataset} · test ${metric} (${higher ? "higher" : "lower"} is better)`;
    const columns = ["#", "model_name", "version", "test", "int8", "baseline", "val_metric", "n_trials", "created_at"];
    body.append(table(columns, ranked, title));
  }
  olderNote(body, "package", rows.filter((r) => r.schema_version === null).length);
}

const RUNS = `
SELECT run_key, model_name, status, failed_step AS step, error, started_at, round(duration_s, 1) AS duration_s,
       package_version, round(cost, 4) AS cost, cost_currency, schema_version
FROM runs WHERE ${filterSql("started_at")} ORDER BY started_at DESC NULLS LAST LIMIT 200`;

async function runs(body) {
  if (missing("runs")) {
    return note(body, whereMissing("runs"));
  }
  const rows = await query(RUNS, ...filterParams());
  if (rows.length === 0) {
    return note(body, "No run matches the filters.");
  }
  const columns = ["run_key", "model_name", "status", "step", "error", "started_at", "duration_s", "package_version", "cost", "cost_currency"];
  body.append(table(columns, rows, "runs"));
  olderNote(body, "run", rows.filter((r) => r.schema_version === null).length);
}

async function runDirection(run) {
  const [row] = await query("SELECT config FROM runs WHERE run_key = ?", run);
  let metric = "accuracy";
  try {
    metric = JSON.parse(row.config).hpo.metric || metric;
  } catch {
    // a run record without a readable config: the default metric
  }
  return { metric, higher: (manifest.directions[metric] || "maximize") === "maximize" };
}

async function history(body) {
  const run = $("f-run").value;
  if (unavailable(body, "trials", run, "run")) {
    return;
  }
  const rows = await query(
    "SELECT number, state, round(value, 4) AS value, round(duration_s, 1) AS seconds FROM trials WHERE run_key = ? ORDER BY number",
    run,
  );
  if (rows.length === 0) {
    return note(body, `Run ${run} has no trial records (it may have failed before its trials were written).`);
  }
  const { metric, higher } = await runDirection(run);
  let best = null;
  for (const r of rows) {
    if (r.state === "COMPLETE" && r.value !== null) {
      best = best === null ? r.value : higher ? Math.max(best, r.value) : Math.min(best, r.value);
    }
    r.best_so_far = best;
  }
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: 520,
    height: 220,
    data: { values: rows },
    layer: [
      {
        mark: { type: "point", filled: true, size: 60 },
        encoding: {
          x: { field: "number", type: "quantitative", title: "trial", axis: { tickMinStep: 1 } },
          y: { field: "value", type: "quantitative", title: metric, scale: { zero: false } },
          color: { field: "state", type: "nominal" },
        },
      },
      {
        mark: { type: "line", interpolate: "step-after", color: "#c81e1e" },
        encoding: { x: { field: "number", type: "quantitative" }, y: { field: "best_so_far", type: "quantitative" } },
      },
    ],
  };
  const chart = el("div", { class: "chart" });
  body.append(chart);
  await window.vegaEmbed(chart, spec, { actions: false, renderer: "svg" });
  body.append(table(["number", "state", "value", "best_so_far", "seconds"], rows, `trials of ${run} (${metric})`));
}

// The complete trials no other beats on both the metric and the INT8 latency.
function paretoFront(rows, higher) {
  const done = rows.filter((r) => r.state === "COMPLETE" && r.value !== null && r.latency_ms !== null);
  const score = (r) => (higher ? r.value : -r.value);
  return new Set(
    done
      .filter((r) => !done.some((o) => score(o) >= score(r) && o.latency_ms <= r.latency_ms && (score(o) > score(r) || o.latency_ms < r.latency_ms)))
      .map((r) => r.number),
  );
}

async function pareto(body) {
  const run = $("f-run").value;
  if (unavailable(body, "trials", run, "run")) {
    return;
  }
  const rows = await query(
    `SELECT number, state, round(value, 4) AS value, round(latency_ms, 3) AS latency_ms, round(size_mb, 2) AS size_mb, feasible
     FROM trials WHERE run_key = ? AND latency_ms IS NOT NULL ORDER BY number`,
    run,
  );
  if (rows.length === 0) {
    return note(body, `Run ${run} searched without deployment limits (hpo.constraints): no INT8 latency was measured per trial.`);
  }
  const { metric, higher } = await runDirection(run);
  const front = paretoFront(rows, higher);
  for (const r of rows) {
    r.pareto = front.has(r.number);
    r.within_limits = r.feasible === null ? null : r.feasible ? "yes" : "no (not trained)";
  }
  const x = { field: "latency_ms", type: "quantitative", title: "INT8 p50 latency (ms)", scale: { zero: false } };
  const y = { field: "value", type: "quantitative", title: `validation ${metric}`, scale: { zero: false } };
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: 520,
    height: 220,
    data: { values: rows.filter((r) => r.value !== null) },
    layer: [
      { transform: [{ filter: "datum.pareto" }], mark: { type: "line", color: "#c81e1e" }, encoding: { x, y, order: { field: "latency_ms" } } },
      { mark: { type: "point", filled: true, size: 60 }, encoding: { x, y, color: { field: "pareto", type: "nominal", title: "Pareto front" } } },
    ],
  };
  const chart = el("div", { class: "chart" });
  body.append(chart);
  await window.vegaEmbed(chart, spec, { actions: false, renderer: "svg" });
  body.append(table(["number", "state", "value", "latency_ms", "size_mb", "within_limits", "pareto"], rows, `deployed cost of the trials of ${run} (${metric})`));
}

async function states(body) {
  const run = $("f-run").value;
  if (unavailable(body, "trials", run, "run")) {
    return;
  }
  const counts = await query("SELECT state, count(*) AS trials FROM trials WHERE run_key = ? GROUP BY state ORDER BY state", run);
  body.append(table(["state", "trials"], counts, "trial states"));
  const importances = await query(
    `SELECT p.name AS parameter, round(abs(corr(p.value, t.value)), 4) AS importance, count(*) AS trials
     FROM trial_params p JOIN trials t ON p.run_key = t.run_key AND p.number = t.number
     WHERE p.run_key = ? AND t.state = 'COMPLETE' AND t.value IS NOT NULL
     GROUP BY p.name ORDER BY importance DESC NULLS LAST, parameter`,
    run,
  );
  if (importances.length === 0 || importances[0].trials < 3) {
    note(body, "Parameter importances need at least 3 complete trials with parameters.");
  }
  if (importances.length > 0) {
    body.append(table(["parameter", "importance", "trials"], importances, "importance: |correlation| of each parameter with the objective"));
    note(body, "Importance here is the absolute Pearson correlation over complete trials (log-sampled parameters on a log scale), a quick SQL measure; the join card shows Optuna's fANOVA importances.");
  }
}

async function recipes(body) {
  const chosen = selectedPackage();
  const absent = "No INT8 recipe table: no package's metadata.json under the artifact root lists its INT8 search (packages before schema 2, or none published).";
  if (unavailable(body, "recipes", chosen, "package", absent)) {
    return;
  }
  const rows = await query(
    `SELECT recipe, status, screen_accuracy, accuracy, accuracy_drop_points, p50_ms, fp32_p50_ms, size_mb, seconds
     FROM recipes WHERE model_name = ? AND version = ? ORDER BY position`,
    ...chosen,
  );
  if (rows.length === 0) {
    return note(body, `Package ${chosen.join(" ")} records no INT8 search in its metadata.json.`);
  }
  body.append(table(["recipe", "status", "screen_accuracy", "accuracy", "accuracy_drop_points", "p50_ms", "fp32_p50_ms", "size_mb", "seconds"], rows, `INT8 recipes of ${chosen.join(" ")}`));
}

async function registry(body) {
  if (missing("registry")) {
    return note(body, whereMissing("registry"));
  }
  const f = filters();
  const stages = await query(
    `SELECT model_name, version, arg_max(to_stage, seq) AS stage, max("at") AS changed_at, count(*) AS events
     FROM registry WHERE (? = '' OR model_name = ?) GROUP BY model_name, version ORDER BY model_name, version`,
    f.model,
    f.model,
  );
  body.append(table(["model_name", "version", "stage", "changed_at", "events"], stages, "registry state (the last event of each version)"));
  const events = await query(
    `SELECT seq, model_name, version, action, from_stage, to_stage, who, "at", detail FROM registry
     WHERE (? = '' OR model_name = ?) ORDER BY seq DESC LIMIT 100`,
    f.model,
    f.model,
  );
  body.append(table(["seq", "model_name", "version", "action", "from_stage", "to_stage", "who", "at", "detail"], events, "registry events, newest first"));
}

async function lineage(body) {
  const chosen = selectedPackage();
  if (unavailable(body, "lineage", chosen, "package")) {
    return;
  }
  const nodes = await query(
    "SELECT node_id, kind, path, sha256, parents, package_file, trial FROM lineage WHERE model_name = ? AND version = ?",
    ...chosen,
  );
  if (nodes.length === 0) {
    return note(body, `Package ${chosen.join(" ")} has no lineage records.`);
  }
  // The chain in order: a node after its parents.
  const byId = new Map(nodes.map((n) => [n.node_id, n]));
  const placed = new Set();
  const ordered = [];
  const place = (n) => {
    if (placed.has(n.node_id)) {
      return;
    }
    placed.add(n.node_id);
    for (const p of JSON.parse(n.parents || "[]")) {
      if (byId.has(p.id)) {
        place(byId.get(p.id));
      }
    }
    ordered.push(n);
  };
  nodes.forEach(place);
  const rows = ordered.map((n) => ({
    ...n,
    parents: JSON.parse(n.parents || "[]").map((p) => `${p.id} (${String(p.sha256).slice(0, 12)})`).join(", "),
  }));
  body.append(table(["node_id", "kind", "sha256", "parents", "package_file", "trial", "path"], rows, `lineage of ${chosen.join(" ")}`));
}

const PANELS = { leaderboard, runs, history, pareto, states, recipes, registry, lineage };

async function drawAll() {
  document.body.dataset.ready = "0";
  for (const [name, draw] of Object.entries(PANELS)) {
    const body = document.querySelector(`#p-${name} .body`);
    body.replaceChildren();
    try {
      await draw(body);
      drawn[name] = "ok";
    } catch (err) {
      drawn[name] = `error: ${err}`;
      note(body, `This panel could not be drawn: ${err}`, "error");
    }
  }
  document.body.dataset.ready = "1";
}

async function start() {
  manifest = await (await fetch("data/manifest.json")).json();
  $("built").textContent = `Records of ${manifest.artifact_root}, copied ${manifest.built_at} (record schema ${manifest.schema_version}).`;
  const worker = new Worker(new URL("vendor/duckdb-browser-eh.worker.js", window.location.href));
  const db = new duckdb.AsyncDuckDB(new duckdb.VoidLogger(), worker);
  await db.instantiate(new URL("vendor/duckdb-eh.wasm", window.location.href).href);
  conn = await db.connect();
  // Each record file is one table (kind_0, kind_1, ...); the view unions them by name with an
  // empty table of the current schema, so older files read NULL in the columns they lack.
  for (const kind of manifest.kinds) {
    const columns = manifest.schema[kind].map(([name, type]) => `"${name}" ${type}`).join(", ");
    await conn.query(`CREATE TABLE "_schema_${kind}" (${columns})`);
    const parts = [`SELECT * FROM "_schema_${kind}"`];
    for (const [i, file] of manifest.files[kind].entries()) {
      const response = await fetch(file);
      if (!response.ok) {
        throw new Error(`${file}: HTTP ${response.status}`);
      }
      await conn.insertArrowFromIPCStream(new Uint8Array(await response.arrayBuffer()), { name: `${kind}_${i}`, create: true });
      parts.push(`SELECT * FROM "${kind}_${i}"`);
    }
    await conn.query(`CREATE VIEW "${kind}" AS ${parts.join(" UNION ALL BY NAME ")}`);
  }
  const status = $("status");
  status.replaceChildren();
  for (const text of manifest.notes) {
    note(status, text);
  }
  await fillFilters(true);
  for (const id of ["f-model", "f-from", "f-to"]) {
    $(id).addEventListener("change", async () => {
      await fillFilters(false);
      await drawAll();
    });
  }
  for (const id of ["f-run", "f-package"]) {
    $(id).addEventListener("change", drawAll);
  }
  await drawAll();
  window.trainflowDashboard = { drawn };
}

start().catch((err) => {
  const status = $("status");
  status.replaceChildren();
  note(status, `The dashboard could not start: ${err}`, "error");
  document.body.dataset.ready = "error";
});
