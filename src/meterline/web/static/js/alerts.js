/** Alerts: what is firing (with silence and acknowledge buttons), and what resolved. */
import { count, el, load, money, stats, table, time } from "./core.js";

const SILENCE_SPANS = ["1h", "24h"];

async function call(method, path, body) {
  const response = await fetch(`/api/v1/alerts${path}`, {
    method,
    headers: { accept: "application/json", "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new Error(answer?.error?.message ?? `${response.status} ${response.statusText}`);
  return answer;
}

const alerts = call("GET", "?limit=500").then((body) => body.data);

function figure(value, unit) {
  if (value === null || value === undefined) return "";
  if (unit?.startsWith("usd")) return `${money(value)}/${unit.split("/")[1]}`;
  if (unit === "rate") return `${(value * 100).toFixed(1)}%`;
  if (unit === "ms") return `${(value / 1000).toFixed(1)} s`;
  return `${Number(value).toFixed(2)} ${unit ?? ""}`.trim();
}

function about(alert) {
  const name = `${alert.dimension} ${alert.value}`;
  return alert.details.link ? el("a", { href: alert.details.link }, name) : name;
}

/** Buttons that act on one alert, then reload the page to show the new state. */
function actions(alert) {
  const act = (label, method, path, body) => {
    const button = el("button", { type: "button", "data-alert": String(alert.id) }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await call(method, `/${alert.id}${path}`, body);
        location.reload();
      } catch (error) {
        button.replaceWith(el("span", { class: "error", role: "alert" }, error.message));
      }
    });
    return button;
  };
  const buttons = [];
  if (alert.silenced_until) {
    buttons.push(el("span", { class: "muted" }, `silenced until ${time(alert.silenced_until)} `));
    buttons.push(act("Unsilence", "DELETE", "/silence"));
  } else {
    for (const span of SILENCE_SPANS) buttons.push(act(`Silence ${span}`, "POST", "/silence", { for: span }));
  }
  if (!alert.acknowledged_at) buttons.push(act("Acknowledge", "POST", "/acknowledge", { for: "24h" }));
  else buttons.push(el("span", { class: "muted" }, ` acknowledged by ${alert.acknowledged_by}`));
  return el("div", { class: "chips" }, ...buttons);
}

/** A column format that keeps what `value` made (an element such as a link or buttons). */
const asIs = (value) => value;

const COLUMNS = [
  { label: "Rule", value: (a) => a.rule + (a.details.signal ? ` (${a.details.signal})` : "") },
  { label: "About", value: about, format: asIs },
  { label: "Observed", value: (a) => figure(a.details.observed, a.details.unit), numeric: true },
  { label: "Baseline", value: (a) => figure(a.details.baseline, a.details.unit), numeric: true },
  { label: "Band", value: (a) => figure(a.details.band, a.details.unit), numeric: true },
  { label: "At stake", value: (a) => money(a.details.usd_at_stake), numeric: true },
  { label: "Fired", value: (a) => time(a.fired_at) },
  { label: "What", value: "summary" },
];

load("alert-stats", async (box) => {
  const rows = await alerts;
  const firing = rows.filter((a) => a.state === "firing");
  stats(box, [
    ["Firing", count(firing.length)],
    ["Silenced", count(firing.filter((a) => a.silenced_until).length)],
    ["At stake (firing)", money(firing.reduce((total, a) => total + (a.details.usd_at_stake ?? 0), 0))],
  ]);
});

load("alerts-firing", async (box) => {
  const rows = (await alerts).filter((a) => a.state === "firing");
  table(box, [...COLUMNS, { label: "", value: actions, format: asIs }], rows, "Nothing is firing");
});

load("alerts-resolved", async (box) => {
  const rows = (await alerts).filter((a) => a.state === "resolved");
  table(box, [...COLUMNS, { label: "Resolved", value: (a) => time(a.resolved_at) }], rows, "No resolved alerts");
});
