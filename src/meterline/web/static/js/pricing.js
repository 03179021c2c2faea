/** Pricing: the prices in force now for each configured model, the overrides, and the unpriced models. */
import { api, el, load, requestsLink, stats, table, time } from "./core.js";

const prices = api("prices", { since: "", until: "" });
const dollars = new Intl.NumberFormat("en-US", {
  style: "currency",
  currency: "USD",
  minimumFractionDigits: 2,
  maximumFractionDigits: 6,
});
const perMillion = (value) => (value === null || value === undefined ? "—" : dollars.format(value));
const isOverride = (period) => /override|discount/.test(period.source);
const started = (period, now) => period.effective_from === null || Date.parse(period.effective_from) <= now;
const ended = (period, now) => period.effective_to !== null && Date.parse(period.effective_to) <= now;
const inForce = (period) => started(period, Date.now()) && !ended(period, Date.now());
const modelRequests = (row) => requestsLink({ model: row.name });

/** A price window within the day, from seconds after UTC midnight. */
function timeOfDay([from, to]) {
  const clock = (seconds) => (seconds === 86400 ? "24:00" : new Date(seconds * 1000).toISOString().slice(11, 16));
  return from === 0 && to === 86400 ? "all day" : `${clock(from)}–${clock(to)}`;
}

/** One row per model and price period, with the model's names beside the period's rates. */
function periodRows(models, keep) {
  return models.flatMap((model) => model.periods.filter(keep).map((period) => ({ ...model, ...period })));
}

const COLUMNS = [
  { label: "Model", value: "name", link: modelRequests },
  { label: "Provider", value: "provider" },
  { label: "Priced as", value: "upstream_model" },
  { label: "Input", value: "input", format: perMillion, numeric: true },
  { label: "Output", value: "output", format: perMillion, numeric: true },
  { label: "Cache read", value: "cache_read", format: perMillion, numeric: true },
  { label: "Cache write", value: "cache_write", format: perMillion, numeric: true },
  { label: "Cache write 1h", value: "cache_write_1h", format: perMillion, numeric: true },
  { label: "Tier above", value: "tier_threshold", format: (value) => (value === null ? "—" : `${value} tokens`) },
  { label: "Time of day (UTC)", value: (row) => [row.day_seconds_from, row.day_seconds_to], format: timeOfDay },
  { label: "From (UTC)", value: "effective_from", format: (value) => (value === null ? "always" : time(value)) },
  { label: "Until (UTC)", value: "effective_to", format: (value) => (value === null ? "open" : time(value)) },
  { label: "Source", value: "source" },
];

load("price-stats", async (box) => {
  const priceTable = await prices;
  stats(box, [
    ["Price table version", priceTable.version],
    ["Configured models", String(priceTable.models.length)],
    ["Unpriced models", String(priceTable.unpriced_models.length)],
  ]);
});

load("price-table", async (box) => {
  const rows = periodRows((await prices).models, inForce);
  table(box, COLUMNS, rows, "No configured model has a price in force.");
});

load("price-overrides", async (box) => {
  const rows = periodRows((await prices).models, isOverride);
  table(box, COLUMNS, rows, "No overrides or discounts: every price comes from the bundled genai-prices snapshot.");
});

load("price-unpriced", async (box) => {
  const rows = (await prices).unpriced_models.map((name) => ({ name }));
  table(box, [{ label: "Model", value: "name", link: modelRequests }], rows, "Every configured model has a price.");
  if (rows.length) box.prepend(el("p", { class: "note" }, "Give them a price in your overrides file."));
});
