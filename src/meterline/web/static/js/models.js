/** Models & providers: spend, tokens by kind, latency percentiles and TTFT, error rates, circuit breakers. */
import {
  api, chart, count, DOLLARS, empty, label, load, millis, money, percent, requestsLink, table, time,
} from "./core.js";

const spend = api("spend", { group_by: "provider,model" });
const latency = api("latency", { group_by: "provider,model" });
const name = (row) => `${row.model} (${row.provider})`;
const requestsOf = (row) => requestsLink({ provider: row.provider, model: row.model });
/** The parts of a row's tokens that do not overlap: input counts cache reads and writes, output counts reasoning. */
const TOKEN_KINDS = {
  "input (uncached)": (row) => row.input_tokens - row.cache_read_tokens - row.cache_write_tokens,
  "cache read": (row) => row.cache_read_tokens,
  "cache write": (row) => row.cache_write_tokens,
  "output (visible)": (row) => row.output_tokens - row.reasoning_tokens,
  reasoning: (row) => row.reasoning_tokens,
};
const PERCENTILES = {
  p50: (row) => row.duration_ms_p50,
  p95: (row) => row.duration_ms_p95,
  p99: (row) => row.duration_ms_p99,
};

/** Horizontal bars per model, a trace per named measure, `stacked` or side by side; a click opens the requests. */
function modelBars(box, rows, measures, { format, xaxis = {}, stacked = false }) {
  const shown = [...rows].reverse();
  const traces = Object.entries(measures).map(([measure, value]) => ({
    type: "bar",
    orientation: "h",
    name: measure,
    y: shown.map((row) => label(name(row))),
    x: shown.map(value),
    customdata: shown.map(requestsOf),
    hovertext: shown.map((row) => format(value(row))),
    hovertemplate: "%{y}<br>%{fullData.name}: %{hovertext}<extra></extra>",
  }));
  const layout = {
    barmode: stacked ? "stack" : "group",
    height: Math.max(220, 90 + 36 * rows.length),
    xaxis: { rangemode: "nonnegative", ...xaxis },
    yaxis: { type: "category" },
  };
  chart(box, traces, { layout, target: (point) => point.customdata });
}

load("model-spend", async (box) => {
  modelBars(box, (await spend).rows, { spend: (row) => row.cost_usd }, { format: money, xaxis: DOLLARS });
});

load("model-tokens", async (box) => {
  modelBars(box, (await spend).rows, TOKEN_KINDS, { format: count, stacked: true });
});

load("model-latency", async (box) => {
  modelBars(box, (await latency).rows, PERCENTILES, { format: millis, xaxis: { ticksuffix: " ms" } });
});

load("model-errors", async (box) => {
  const errorRate = { "error rate": (row) => row.error_rate };
  modelBars(box, (await latency).rows, errorRate, { format: percent, xaxis: { tickformat: ".0%" } });
});

load("model-table", async (box) => {
  const [{ rows: costs }, { rows: timings }] = await Promise.all([spend, latency]);
  const rows = timings.map((timing) => ({ ...costs.find((cost) => name(cost) === name(timing)), ...timing }));
  const columns = [
    { label: "Model", value: "model", link: requestsOf },
    { label: "Provider", value: "provider" },
    { label: "Spend", value: "cost_usd", format: money, numeric: true },
    { label: "Attempts", value: "attempts", format: count, numeric: true },
    { label: "Input tokens", value: "input_tokens", format: count, numeric: true },
    { label: "Output tokens", value: "output_tokens", format: count, numeric: true },
    { label: "p50", value: "duration_ms_p50", format: millis, numeric: true },
    { label: "p95", value: "duration_ms_p95", format: millis, numeric: true },
    { label: "p99", value: "duration_ms_p99", format: millis, numeric: true },
    { label: "TTFT p50", value: "ttft_ms_p50", format: millis, numeric: true },
    { label: "TTFT p95", value: "ttft_ms_p95", format: millis, numeric: true },
    { label: "TTFT p99", value: "ttft_ms_p99", format: millis, numeric: true },
    { label: "Error rate", value: "error_rate", format: percent, numeric: true },
  ];
  table(box, columns, rows);
});

const BREAKER_STATES = { closed: "closed", open: "open", half_open: "half-open (probing)" };

load("provider-health", async (box) => {
  const health = await api("providers/health");
  if (!health.breakers_enabled) {
    empty(box, "Circuit breakers are off: set resilience.breaker.failures in the config to turn them on.");
    return;
  }
  const columns = [
    { label: "Model", value: "model" },
    { label: "Provider", value: "provider" },
    { label: "State", value: (row) => BREAKER_STATES[row.state] ?? row.state },
    { label: "Recent failures", value: (row) => `${row.recent_failures} of ${row.failure_threshold}`, numeric: true },
    { label: "Opened", value: "opened_at", format: time },
    { label: "Probe at", value: "retry_at", format: time },
    { label: "Opened after", value: (row) => row.cause ?? "" },
    { label: "Last failure", value: "last_error" },
  ];
  table(box, columns, health.data);
});
