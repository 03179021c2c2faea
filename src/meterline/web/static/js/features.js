/** Features: cost per feature over time, cost per request over time, and a table of features. */
import { api, count, granularity, load, money, requestsLink, seriesChart, table } from "./core.js";

const byFeature = api("spend", { group_by: "feature", granularity: granularity(), limit: 10 });
const perRequest = (row) => (row.requests ? row.cost_usd / row.requests : null);
const feature = (row) => row.feature;

load("feature-cost", async (box) => {
  seriesChart(box, (await byFeature).rows, { y: (row) => row.cost_usd, group: feature, groupBy: "feature" });
});

load("feature-unit-cost", async (box) => {
  seriesChart(box, (await byFeature).rows, { y: perRequest, group: feature, groupBy: "feature", lines: true });
});

load("feature-table", async (box) => {
  const { rows } = await api("spend", { group_by: "feature" });
  const columns = [
    { label: "Feature", value: "feature", link: (row) => requestsLink({ feature: row.feature }) },
    { label: "Spend", value: "cost_usd", format: money, numeric: true },
    { label: "Requests", value: "requests", format: count, numeric: true },
    { label: "Cost per request", value: perRequest, format: money, numeric: true },
    { label: "Input tokens", value: "input_tokens", format: count, numeric: true },
    { label: "Output tokens", value: "output_tokens", format: count, numeric: true },
    { label: "Failed attempts", value: "errors", format: count, numeric: true },
    { label: "Unpriced attempts", value: "unpriced_attempts", format: count, numeric: true },
  ];
  table(box, columns, rows);
});
