/** Users: how spend is spread over users, the top users, and one user's history (`?focus=<user>`). */
import {
  api, barChart, chart, count, el, empty, granularity, here, label, load, money, params, percent, requestsLink,
  seriesChart, stats, table,
} from "./core.js";

const focus = params.get("focus");
const distribution = api("users/distribution", { bins: 20, limit: 15 });

load("user-stats", async (box) => {
  const spread = await distribution;
  stats(box, [
    ["Users with spend", count(spread.users), `${money(spread.total_cost_usd)} in all`],
    ["Median user", money(spread.percentiles.p50)],
    ["90th percentile", money(spread.percentiles.p90)],
    ["99th percentile", money(spread.percentiles.p99)],
    ["Top 1% of users", percent(spread.top_1pct_share), "of attributed spend"],
    ["Top 10% of users", percent(spread.top_10pct_share), "of attributed spend"],
  ]);
});

load("user-histogram", async (box) => {
  const { histogram } = await distribution;
  const step = Math.ceil(histogram.length / 6); // label every few bins with its lower edge
  const ticks = histogram.map((_, index) => index).filter((index) => index % step === 0);
  const bars = {
    type: "bar",
    x: histogram.map((_, index) => index),
    y: histogram.map((bin) => bin.users),
    hovertext: histogram.map((bin) => label(`${money(bin.lo)} to ${money(bin.hi)}: ${count(bin.users)} users`)),
    hovertemplate: "%{hovertext}<extra></extra>",
  };
  const xaxis = {
    title: { text: "spend per user (log scale)" },
    tickvals: ticks,
    ticktext: ticks.map((index) => label(money(histogram[index].lo))),
  };
  chart(box, [bars], { layout: { bargap: 0.05, xaxis, yaxis: { title: { text: "users" } } } });
});

load("user-top", async (box) => {
  const { top } = await distribution;
  const target = (row) => here({ focus: row.user });
  barChart(box, top, { value: (row) => row.user, size: (row) => row.cost_usd, target });
});

load("user-history", async (box) => {
  if (!focus) return empty(box, "Click a user among the top users to see their spend over time.");
  const { rows } = await api("spend", { granularity: granularity(), "filter[user]": focus });
  seriesChart(box, rows, { y: (row) => row.cost_usd, filters: { user: focus } });
  box.prepend(el("p", { class: "note" }, `User: ${focus}`));
});

const requestsOf = (row) => requestsLink({ user: focus, feature: row.feature, model: row.model });

load("user-breakdown", async (box) => {
  if (!focus) return empty(box, "No user chosen.");
  const { rows } = await api("spend", { group_by: "feature,model", "filter[user]": focus });
  const columns = [
    { label: "Feature", value: "feature", link: requestsOf },
    { label: "Model", value: "model" },
    { label: "Spend", value: "cost_usd", format: money, numeric: true },
    { label: "Requests", value: "requests", format: count, numeric: true },
    { label: "Failed attempts", value: "errors", format: count, numeric: true },
  ];
  table(box, columns, rows);
});
