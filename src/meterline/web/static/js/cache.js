/** Cache: the gateway cache's hit rate and savings by feature, and how much input providers read from prompt caches. */
import { api, barChart, count, empty, load, money, percent, requestsLink, table } from "./core.js";

const byFeature = api("cache", { group_by: "feature" });
const feature = (row) => row.feature;
const requestsOf = (row) => requestsLink({ feature: row.feature });
const SHARE_AXIS = { tickformat: ".0%", range: [0, 1] };

load("cache-rate", async (box) => {
  const { rows } = await byFeature;
  if (rows.length && !rows.some((row) => row.hits)) return empty(box, "No gateway cache hits in this range.");
  const describe = (row) => percent(row.hit_rate);
  barChart(box, rows, { value: feature, size: (row) => row.hit_rate, describe, xaxis: SHARE_AXIS, target: requestsOf });
});

load("cache-saved", async (box) => {
  const { rows } = await byFeature;
  if (rows.length && !rows.some((row) => row.saved_usd)) return empty(box, "The gateway cache saved nothing in this range.");
  barChart(box, rows, { value: feature, size: (row) => row.saved_usd, target: requestsOf });
});

load("cache-prompt", async (box) => {
  const { rows } = await api("spend", { group_by: "feature" });
  const share = (row) => (row.input_tokens ? row.cache_read_tokens / row.input_tokens : 0);
  const describe = (row) => `${percent(share(row))} of ${count(row.input_tokens)} input tokens`;
  barChart(box, rows, { value: feature, size: share, describe, xaxis: SHARE_AXIS, target: requestsOf });
});

load("cache-table", async (box) => {
  const columns = [
    { label: "Feature", value: "feature", link: requestsOf },
    { label: "Requests", value: "requests", format: count, numeric: true },
    { label: "Cache hits", value: "hits", format: count, numeric: true },
    { label: "Hit rate", value: "hit_rate", format: percent, numeric: true },
    { label: "Saved", value: "saved_usd", format: money, numeric: true },
  ];
  table(box, columns, (await byFeature).rows);
});
