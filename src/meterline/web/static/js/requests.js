/** Requests: the event log page by page (`?cursor=`), and one request's attempts and attribution (`?open=<id>`). */
import { api, count, el, here, load, millis, money, params, sum, table, time } from "./core.js";

const opened = params.get("open");
const ATTRIBUTION = [
  "user", "feature", "team", "app", "env", "prompt_id", "prompt_version", "session_id", "agent_run_id", "agent_step",
  "key_id", "trace_id", "source",
];
const status = (row) => (row.error_class === "none" ? `${row.status_code}` : `${row.status_code} ${row.error_class}`);
const openLink = (row) => here({ open: row.request_id });

load("request-log", async (box) => {
  const cursor = params.get("cursor");
  const page = await api("events", { limit: 50, request_id: params.get("request_id"), cursor });
  const columns = [
    { label: "Time (UTC)", value: "started_at", format: time },
    { label: "Request", value: "request_id", format: (id) => `…${id.slice(-10)}`, link: openLink },
    { label: "Attempt", value: "attempt", numeric: true },
    { label: "Model", value: "requested_model" },
    { label: "Provider", value: "provider" },
    { label: "Feature", value: "feature" },
    { label: "User", value: "user" },
    { label: "Status", value: status },
    { label: "In", value: "input_tokens", format: count, numeric: true },
    { label: "Out", value: "output_tokens", format: count, numeric: true },
    { label: "Cost", value: "cost_usd", format: money, numeric: true },
    { label: "Duration", value: "duration_ms", format: millis, numeric: true },
  ];
  table(box, columns, page.data);
  const newest = cursor && el("a", { class: "chip", href: here({ cursor: "" }) }, "← Newest");
  const next = page.next_cursor;
  const older = next && el("a", { class: "chip", href: here({ cursor: next }), rel: "next" }, "Older →");
  box.append(el("p", { class: "chips pager" }, newest, older));
});

load("request-detail", async (box) => {
  if (!opened) return box.closest(".card").remove();
  const { attempts } = await api(`requests/${encodeURIComponent(opened)}`, { since: "", until: "" });
  const [attemptBox, attributionBox] = [el("div"), el("div")];
  const total = money(sum(attempts, (attempt) => attempt.cost_usd));
  box.replaceChildren(
    el("p", { class: "note" }, `Request ${opened}: ${count(attempts.length)} attempt(s), ${total}`),
    el("h3", {}, "Attempts"),
    attemptBox,
    el("h3", {}, "Attribution"),
    attributionBox,
    el("p", {}, el("a", { href: here({ open: "" }) }, "Close")),
  );
  const attemptColumns = [
    { label: "Attempt", value: "attempt", numeric: true },
    { label: "Started (UTC)", value: "started_at", format: time },
    { label: "Operation", value: (row) => (row.streaming ? `${row.operation} (stream)` : row.operation) },
    { label: "Model", value: "requested_model" },
    { label: "Upstream", value: (row) => row.response_model ?? row.upstream_model },
    { label: "Status", value: status },
    { label: "Error", value: "error_message", format: (message) => message ?? "" },
    { label: "In", value: "input_tokens", format: count, numeric: true },
    { label: "Cache read", value: "cache_read_tokens", format: count, numeric: true },
    { label: "Out", value: "output_tokens", format: count, numeric: true },
    { label: "Reasoning", value: "reasoning_tokens", format: count, numeric: true },
    { label: "Cost", value: "cost_usd", format: money, numeric: true },
    { label: "Price version", value: "price_version" },
    { label: "Duration", value: "duration_ms", format: millis, numeric: true },
    { label: "TTFT", value: "ttft_ms", format: millis, numeric: true },
    { label: "Cache", value: "cache_status" },
  ];
  table(attemptBox, attemptColumns, attempts);
  const [first] = attempts;
  const attribution = [
    ...ATTRIBUTION.filter((name) => first[name] !== null).map((name) => ({ name, value: first[name] })),
    ...Object.entries(first.properties).map(([name, value]) => ({ name: `property.${name}`, value })),
  ];
  const fieldColumns = [{ label: "Field", value: "name" }, { label: "Value", value: "value" }];
  table(attributionBox, fieldColumns, attribution, "No attribution: no user, feature or other field was set.");
});
