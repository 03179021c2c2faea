/** Agents: runs by cost and steps, and one run (`?run=<id>`) as a waterfall of its steps over time. */
import {
  api, chart, count, DOLLARS, el, empty, here, label, load, millis, money, params, plotTime, requestsLink, sum, table,
  time,
} from "./core.js";

const chosen = params.get("run");
const runs = api("agents/runs", { limit: 50 });
const runLink = (row) => here({ run: row.agent_run_id });
const color = (failed) => (failed ? "#ef4444" : "#4f46e5");

load("run-chart", async (box) => {
  const { rows } = await runs;
  const dots = {
    type: "scatter",
    mode: "markers",
    x: rows.map((row) => row.steps),
    y: rows.map((row) => row.cost_usd),
    customdata: rows.map(runLink),
    text: rows.map((row) => label(row.agent_run_id)),
    marker: { size: rows.map((row) => 8 + Math.min(row.attempts, 20)), color: rows.map((row) => color(row.errors)) },
    hovertemplate: "run %{text}<br>%{x} steps, %{y:$.4f}<extra></extra>",
  };
  const layout = {
    xaxis: { title: { text: "steps" }, rangemode: "tozero" },
    yaxis: { title: { text: "cost" }, ...DOLLARS },
  };
  chart(box, [dots], { layout, target: (point) => point.customdata });
});

load("run-table", async (box) => {
  const columns = [
    { label: "Run", value: "agent_run_id", link: runLink },
    { label: "Feature", value: "feature" },
    { label: "User", value: "user" },
    { label: "Started (UTC)", value: "started_at", format: time },
    { label: "Steps", value: "steps", format: count, numeric: true },
    { label: "Cost", value: "cost_usd", format: money, numeric: true },
    { label: "Failed attempts", value: "errors", format: count, numeric: true },
  ];
  table(box, columns, (await runs).rows);
});

load("run-waterfall", async (box) => {
  if (!chosen) return empty(box, "Click a run to see its steps.");
  const run = await api(`agents/runs/${encodeURIComponent(chosen)}`, { since: "", until: "" });
  const steps = [...run.steps].reverse(); // the first step on top
  const bars = {
    type: "bar",
    orientation: "h",
    base: steps.map((step) => plotTime(step.started_at)),
    x: steps.map((step) => Math.max(step.duration_ms, 1)),
    y: steps.map((step, index) => label(`${steps.length - index}. step ${step.agent_step ?? "?"} · ${step.model}`)),
    customdata: steps.map((step) => requestsLink({ request_id: step.request_id, open: step.request_id })),
    text: steps.map((step) => label(`${millis(step.duration_ms)} · ${money(step.cost_usd)}`)),
    textposition: "auto",
    marker: { color: steps.map((step) => color(step.error_class !== "none")) },
    hovertemplate: "%{y}<br>%{text}<extra></extra>",
  };
  const layout = {
    height: Math.max(220, 80 + 30 * steps.length),
    xaxis: { type: "date", title: { text: "time (UTC)" } },
    yaxis: { type: "category", rangemode: "normal" },
  };
  chart(box, [bars], { layout, target: (point) => point.customdata });
  const total = money(sum(run.steps, (step) => step.cost_usd));
  box.prepend(el("p", { class: "note" }, `Run ${run.agent_run_id}: ${run.steps.length} steps, ${total}`));
});
