/** Overview: headline figures, spend over time, the month's forecast (overall, by team and feature), the top
 * spenders and unattributed spend. */
import {
  api, barChart, bucketRange, chart, count, DOLLARS, el, empty, granularity, load, money, percent, requestsLink,
  seriesChart, stats, sum, table, utcMidnight,
} from "./core.js";

const spend = api("spend", { granularity: granularity() });
const forecast = api("forecast");
const lastWeek = api("spend", { granularity: "day", since: utcMidnight(7), until: "" });
const cost = (row) => row.cost_usd;
const interval = (projection) => `${money(projection.low_usd)} to ${money(projection.high_usd)}`;

load("headline", async (box) => {
  const [range, month, week] = await Promise.all([spend, forecast, lastWeek]);
  const today = Date.parse(utcMidnight(0));
  const todayCost = sum(week.rows.filter((row) => Date.parse(row.bucket) >= today), cost);
  const dailyAverage = sum(week.rows.filter((row) => Date.parse(row.bucket) < today), cost) / 7;
  const comparison = dailyAverage
    ? `${percent(todayCost / dailyAverage)} of the 7-day average`
    : "no spend in the 7 days before";
  stats(box, [
    ["Spend in range", money(range.totals.cost_usd), `${count(range.totals.requests)} requests`],
    ["Today so far (UTC)", money(todayCost), comparison],
    ["7-day daily average", money(dailyAverage), "the 7 full UTC days before today"],
    [`Month to date (${month.month})`, money(month.month_to_date_usd)],
    ["Projected month end", money(month.projected_month_end_usd), `${interval(month)} (90% interval)`],
  ]);
});

load("trend", async (box) => {
  seriesChart(box, (await spend).rows, { y: cost });
});

load("forecast", async (box) => {
  const month = await forecast;
  if (!month.daily.some(cost)) return empty(box, "No spend this month");
  const days = month.daily.map((day) => day.day);
  let total = 0;
  const cumulative = month.daily.map((day) => (total += day.cost_usd));
  const [year, monthNumber] = month.month.split("-").map(Number);
  const monthEnd = new Date(Date.UTC(year, monthNumber, 0)).toISOString().slice(0, 10);
  const projected = month.projected_month_end_usd;
  chart(
    box,
    [
      { type: "bar", name: "daily spend", x: days, y: month.daily.map(cost), customdata: days },
      { type: "scatter", mode: "lines+markers", name: "month to date", x: days, y: cumulative },
      {
        type: "scatter",
        mode: "lines+markers",
        name: "forecast",
        line: { dash: "dash" },
        x: [days.at(-1), monthEnd],
        y: [total, projected],
        error_y: {
          type: "data",
          symmetric: false,
          array: [0, month.high_usd - projected],
          arrayminus: [0, projected - month.low_usd],
        },
      },
    ],
    {
      layout: { xaxis: { type: "date", range: [`${month.month}-01`, monthEnd] }, yaxis: DOLLARS },
      target: (point) => point.customdata && requestsLink(bucketRange(`${point.customdata}T00:00:00Z`, "day", false)),
    },
  );
  const range = `${interval(month)} with ${percent(month.interval_level)} confidence`;
  box.append(el("p", { class: "note" }, `Projected ${money(projected)} by ${monthEnd} (${range}): ${month.method}.`));
});

for (const by of ["team", "feature"]) {
  load(`forecast-${by}`, async (box) => {
    const { groups, interval_level: level } = await api("forecast", { group_by: by, limit: 10 });
    const columns = [
      { label: by[0].toUpperCase() + by.slice(1), value: "value", link: (row) => requestsLink({ [by]: row.value }) },
      { label: "Month to date", value: "month_to_date_usd", format: money, numeric: true },
      { label: "Projected", value: "projected_month_end_usd", format: money, numeric: true },
      { label: `${percent(level)} interval`, value: interval, numeric: true },
    ];
    table(box, columns, groups.filter((row) => row.projected_month_end_usd > 0), "No spend this month");
  });
}

for (const by of ["feature", "user", "model"]) {
  load(`top-${by}`, async (box) => {
    const top = await api("top", { by, limit: 8 });
    const target = (row) => requestsLink({ [by]: row.value });
    barChart(box, top.rows, { value: (row) => row.value, size: cost, target });
    if (top.rows.length) {
      const { cost_usd, share } = top.unattributed;
      const note = `Unattributed: ${money(cost_usd)} (${percent(share)} of ${money(top.total_cost_usd)})`;
      box.append(el("p", { class: "note" }, note));
    }
  });
}

load("unattributed", async (box) => {
  const [range, unattributed] = await Promise.all([spend, api("unattributed")]);
  const dimensions = Object.entries(unattributed.dimensions).map(([name, part]) => ({ name, ...part }));
  const columns = [
    { label: "Dimension", value: "name" },
    { label: "Spend with no value", value: "cost_usd", format: money, numeric: true },
    { label: "Share of spend", value: "share", format: percent, numeric: true },
  ];
  table(box, columns, range.totals.attempts ? dimensions : []);
});
