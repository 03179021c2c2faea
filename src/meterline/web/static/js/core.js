/**
 * What every dashboard page shares: the page's range and filters as query strings (for links and
 * API calls alike), fetching the JSON API, number formats, and the one table and chart renderers.
 *
 * Data from the API enters the page only as text nodes and attribute values (never as HTML), and
 * Plotly labels get it escaped with `label`, because Plotly reads a few HTML tags in label text.
 */

const FILTERS = ["team", "app", "feature", "user", "model", "provider"];
const CARRIED = ["since", "until", ...FILTERS];
const DEFAULT_SINCE = "7d";
const SPAN = /^(\d+)([smhdw])$/;
const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };
const GRANULARITY_MS = { hour: 3600e3, day: 86400e3 };
const NO_DATA = "No data in this range";

/** The query parameters of the page being shown. */
export const params = new URLSearchParams(location.search);

// ---- query strings -------------------------------------------------------------------------

/** `base` with `changes` applied; a null, undefined or empty value removes a parameter. */
function merged(base, changes) {
  const query = new URLSearchParams(base);
  for (const [name, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") query.delete(name);
    else query.set(name, String(value));
  }
  return query;
}

function withQuery(path, query) {
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * The requests behind a chart point or table row: `/requests` with this page's range and filters,
 * narrowed by `narrower` (e.g. `{feature, since, until}`). Null when one of those values is null:
 * the events API cannot select events whose dimension is not set.
 */
export function requestsLink(narrower) {
  if (Object.values(narrower).some((value) => value === null || value === undefined)) return null;
  const carried = new URLSearchParams();
  for (const name of CARRIED) if (params.get(name)) carried.set(name, params.get(name));
  return withQuery("/requests", merged(carried, narrower));
}

/** This page's URL with some of its parameters changed (page-specific ones such as `run` included). */
export function here(changes = {}) {
  return withQuery(location.pathname, merged(params, changes));
}

/** The query of an API call: the range, the filters (`filter[dim]=`, or `dim=` for events), then `changes`. */
function apiQuery(changes, events) {
  const query = new URLSearchParams({ since: params.get("since") || DEFAULT_SINCE });
  if (params.get("until")) query.set("until", params.get("until"));
  for (const name of FILTERS) {
    if (params.get(name)) query.set(events ? name : `filter[${name}]`, params.get(name));
  }
  return merged(query, changes);
}

// ---- time ----------------------------------------------------------------------------------

/** Milliseconds since the epoch of an API time parameter: a span back from now (`7d`) or ISO (UTC without offset). */
function moment(text) {
  const span = SPAN.exec(text);
  if (span) return Date.now() - Number(span[1]) * UNIT_MS[span[2]];
  return Date.parse(/(Z|[+-]\d\d:?\d\d)$/i.test(text) ? text : `${text}Z`);
}

function rangeStart() {
  return moment(params.get("since") || DEFAULT_SINCE);
}

function rangeEnd() {
  return params.get("until") ? moment(params.get("until")) : Date.now();
}

/** The bucket width of time series: `?granularity=hour|day`, else hours for ranges up to two days. */
export function granularity() {
  const chosen = params.get("granularity");
  if (Object.hasOwn(GRANULARITY_MS, chosen ?? "")) return chosen;
  return rangeEnd() - rangeStart() <= 2 * UNIT_MS.d ? "hour" : "day";
}

/** `since`/`until` of the bucket starting at `bucket` (ISO), clipped to the page's range unless `clip` is false. */
export function bucketRange(bucket, width = granularity(), clip = true) {
  const start = Date.parse(bucket);
  const end = start + GRANULARITY_MS[width];
  return {
    since: new Date(clip ? Math.max(start, rangeStart()) : start).toISOString(),
    until: new Date(clip ? Math.min(end, rangeEnd()) : end).toISOString(),
  };
}

/** Links that switch this page's time series between hourly and daily buckets. */
function granularityLinks() {
  const shown = granularity();
  const links = Object.keys(GRANULARITY_MS).map((width) => {
    const current = width === shown ? "true" : null;
    return el("a", { class: "chip", href: here({ granularity: width }), "aria-current": current }, `by ${width}`);
  });
  return el("p", { class: "chips" }, ...links);
}

/** Midnight UTC `days` days before today, as ISO. */
export function utcMidnight(daysBefore = 0) {
  const today = new Date();
  const midnight = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - daysBefore);
  return new Date(midnight).toISOString();
}

// ---- the API -------------------------------------------------------------------------------

/** GET `/api/v1/<path>` with the page's range and filters changed by `changes`; throws with the API's message. */
export async function api(path, changes = {}) {
  const url = withQuery(`/api/v1/${path}`, apiQuery(changes, path === "events"));
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (response.status === 401) {
    location.assign(withQuery("/login", new URLSearchParams({ next: location.pathname + location.search })));
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message ?? `${response.status} ${response.statusText}`);
  return body;
}

/** Fill the element `id` with `render(element)`; an error is shown in its place. */
export async function load(id, render) {
  const box = document.getElementById(id);
  try {
    await render(box);
  } catch (error) {
    box.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
  } finally {
    box.removeAttribute("aria-busy");
  }
}

// ---- DOM -----------------------------------------------------------------------------------

/** A new element: attributes (null ones left out) set as values, children appended as text or nodes, never as HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

export function empty(box, text = NO_DATA) {
  box.replaceChildren(el("p", { class: "empty" }, text));
}

/**
 * Render `rows` as a table into `box`. A column is `{label, value, format?, link?, numeric?}`:
 * `value` is a row's key or a function of the row, `format` turns the value into text (default:
 * as is, "(not set)" for null), and `link(row)` makes the cell a link when it returns a URL.
 */
export function table(box, columns, rows, emptyText = NO_DATA) {
  if (!rows.length) return empty(box, emptyText);
  const head = columns.map((column) => el("th", { scope: "col", class: cellClass(column) }, column.label));
  const body = rows.map((row) => el("tr", {}, ...columns.map((column) => tableCell(column, row))));
  const grid = el("table", {}, el("thead", {}, el("tr", {}, ...head)), el("tbody", {}, ...body));
  box.replaceChildren(el("div", { class: "table-wrap" }, grid));
}

function tableCell(column, row) {
  const value = typeof column.value === "function" ? column.value(row) : row[column.value];
  const text = (column.format ?? plain)(value);
  const href = column.link?.(row);
  return el("td", { class: cellClass(column) }, href ? el("a", { href }, text) : text);
}

function cellClass(column) {
  return column.numeric ? "num" : null;
}

/** Headline figures into `box`: `[label, value, note?]` each. */
export function stats(box, items) {
  const tile = ([name, value, note]) => {
    const parts = [el("span", { class: "stat-label" }, name), el("strong", {}, value), note && el("small", {}, note)];
    return el("div", { class: "stat" }, ...parts);
  };
  box.replaceChildren(...items.map(tile));
}

/** Send GET forms without their empty fields, so URLs carry only the filters that are set. */
function tidyForms() {
  for (const form of document.querySelectorAll('form[method="get"]')) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      for (const [name, value] of new FormData(form)) if (value) query.set(name, value);
      location.assign(withQuery(form.getAttribute("action"), query));
    });
  }
}

tidyForms();

/** The sum of `value(item)` over `items`, counting null as 0. */
export function sum(items, value) {
  return items.reduce((total, item) => total + (value(item) ?? 0), 0);
}

// ---- formats -------------------------------------------------------------------------------

const dollars = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });
const whole = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

function missing(value) {
  return value === null || value === undefined;
}

function plain(value) {
  return missing(value) ? "(not set)" : String(value);
}

export function money(value) {
  if (missing(value)) return "unpriced";
  return Math.abs(value) >= 0.01 || value === 0 ? dollars.format(value) : cents.format(value);
}

export function count(value) {
  return missing(value) ? "—" : whole.format(value);
}

export function percent(value) {
  return missing(value) ? "—" : `${(value * 100).toFixed(1)}%`;
}

export function ratio(value) {
  return missing(value) ? "—" : `${value.toFixed(2)}×`;
}

export function millis(value) {
  if (missing(value)) return "—";
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`;
}

/** A time as `YYYY-MM-DD HH:MM:SS` in UTC. */
export function time(value) {
  return missing(value) ? "—" : new Date(value).toISOString().slice(0, 19).replace("T", " ");
}

/** A time as Plotly reads it on a date axis: UTC wall-clock time to the millisecond. */
export function plotTime(value) {
  return new Date(value).toISOString().replace("T", " ").replace("Z", "");
}

// ---- charts --------------------------------------------------------------------------------

const COLORS = [
  "#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#f97316", "#64748b", "#ec4899",
];
const AXIS = { gridcolor: "#eceff3", zerolinecolor: "#d5d9e0", automargin: true };
const LAYOUT = {
  height: 320,
  margin: { l: 56, r: 16, t: 12, b: 40 },
  font: { family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 12, color: "#1f2937" },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  colorway: COLORS,
  legend: { orientation: "h", y: -0.18, traceorder: "normal" },
  hovermode: "closest",
};
const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"] };

/**
 * Text for Plotly labels: Plotly reads a few HTML tags in labels and takes text between two `$` for
 * LaTeX, so `&`, `<`, `>` and `$` become entities (which it shows as the characters).
 */
export function label(value, absent = "(not set)") {
  if (missing(value)) return absent;
  const entities = { "&": "&amp;", "<": "&lt;", ">": "&gt;", $: "&#36;" };
  return String(value).replace(/[&<>$]/g, (character) => entities[character]);
}

/** Axis settings for US dollars: plain decimals (no SI prefixes such as µ). */
export const DOLLARS = { tickprefix: "$", tickformat: ",.6~f" };

/**
 * Draw `traces` into `box` with the shared look; `layout` adds to it (axes are merged). With
 * `target(point)`, clicking a point goes to the URL it returns (the requests behind the point).
 * Without data the box says so.
 */
export function chart(box, traces, { layout = {}, target } = {}) {
  if (!traces.some((trace) => (trace.y ?? trace.x ?? []).length)) return empty(box);
  const plot = el("div", { class: target ? "plot clickable" : "plot" });
  box.replaceChildren(plot);
  const axes = { xaxis: { ...AXIS, ...layout.xaxis }, yaxis: { ...AXIS, rangemode: "tozero", ...layout.yaxis } };
  Plotly.newPlot(plot, traces, { ...LAYOUT, ...layout, ...axes }, CONFIG);
  if (target) {
    plot.on("plotly_click", (event) => {
      const url = target(event.points[0]);
      if (url) location.assign(url);
    });
  }
}

/**
 * One horizontal bar per row, labelled by `value(row)` and as long as `size(row)`, the first row on
 * top; `describe(row)` is the text by the bar and `xaxis` adds to the value axis. Clicking a bar
 * goes to the URL `target(row)` returns.
 */
export function barChart(box, rows, { value, size, describe = (row) => money(size(row)), xaxis = DOLLARS, target }) {
  const shown = [...rows].reverse();
  const trace = {
    type: "bar",
    orientation: "h",
    y: shown.map((row) => label(value(row))),
    x: shown.map(size),
    customdata: shown.map((_, index) => index),
    text: shown.map((row) => label(describe(row))),
    textposition: "auto",
    hovertemplate: "%{y}: %{text}<extra></extra>",
  };
  const layout = {
    height: Math.max(200, 60 + 28 * rows.length),
    xaxis: { rangemode: "nonnegative", ...xaxis },
    yaxis: { type: "category" },
  };
  chart(box, [trace], { layout, target: target && ((point) => target(shown[point.customdata])) });
}

/**
 * Time series from spend rows (each with a `bucket`) over the page's range: one trace per
 * `group(row)` (omit it for one series), stacked bars or lines of `y(row)`. Clicking a point goes to
 * the requests of its bucket, narrowed by `filters` and, when `groupBy` names the grouping
 * dimension, by the point's group.
 */
export function seriesChart(box, rows, options) {
  const { y, format = money, group = () => null, groupBy, filters = {}, lines = false, yaxis = DOLLARS } = options;
  const width = granularity();
  const middle = (row) => plotTime(Date.parse(row.bucket) + GRANULARITY_MS[width] / 2);
  const series = new Map();
  for (const row of rows) {
    const key = group(row);
    if (!series.has(key)) series.set(key, []);
    series.get(key).push(row);
  }
  const traces = [...series].map(([key, members]) => ({
    type: lines ? "scatter" : "bar",
    mode: "lines+markers",
    name: label(key),
    x: members.map(middle),
    y: members.map(y),
    ...(lines ? {} : { width: GRANULARITY_MS[width] * 0.85 }),
    customdata: members.map((row) => [row.bucket, key]),
    hovertext: members.map((row) => label(`${time(row.bucket)} UTC, ${width} · ${format(y(row))}`)),
    hovertemplate: "%{fullData.name}<br>%{hovertext}<extra></extra>",
  }));
  const target = ({ customdata: [bucket, key] }) =>
    requestsLink({ ...bucketRange(bucket, width), ...filters, ...(groupBy && { [groupBy]: key }) });
  const snap = (instant, round) => round(instant / GRANULARITY_MS[width]) * GRANULARITY_MS[width]; // UTC buckets
  const xaxis = { type: "date", range: [snap(rangeStart(), Math.floor), snap(rangeEnd(), Math.ceil)].map(plotTime) };
  chart(box, traces, { layout: { barmode: "stack", showlegend: series.size > 1, xaxis, yaxis }, target });
  if (rows.length) box.append(granularityLinks());
}
