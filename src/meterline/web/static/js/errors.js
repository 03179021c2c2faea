/** Errors: failed attempts over time, cost by error class, and retry amplification by feature and model. */
import { api, barChart, count, granularity, load, money, ratio, requestsLink, seriesChart, table } from "./core.js";

const retries = api("retries", { group_by: "feature,model" });
const requestsOf = (row) => requestsLink({ feature: row.feature, model: row.model });

load("error-trend", async (box) => {
  const { rows } = await api("spend", { granularity: granularity() });
  seriesChart(box, rows, { y: (row) => row.errors, format: count, yaxis: { title: { text: "failed attempts" } } });
});

load("error-classes", async (box) => {
  const { rows } = await api("errors");
  barChart(box, rows, {
    value: (row) => row.error_class,
    size: (row) => row.attempts,
    describe: (row) => `${count(row.attempts)} failed · ${money(row.cost_usd)}`,
    xaxis: {},
    // /api/v1/events has no error_class filter: a class opens all the requests of the range and filters.
    target: () => requestsLink({}),
  });
});

load("retry-chart", async (box) => {
  barChart(box, (await retries).rows, {
    value: (row) => `${row.feature ?? "(not set)"} · ${row.model}`,
    size: (row) => row.amplification,
    describe: (row) => ratio(row.amplification),
    xaxis: {},
    target: requestsOf,
  });
});

load("retry-table", async (box) => {
  const columns = [
    { label: "Feature", value: "feature", link: requestsOf },
    { label: "Model", value: "model" },
    { label: "Requests", value: "requests", format: count, numeric: true },
    { label: "Attempts", value: "attempts", format: count, numeric: true },
    { label: "Attempts per request", value: "amplification", format: ratio, numeric: true },
  ];
  table(box, columns, (await retries).rows);
});
