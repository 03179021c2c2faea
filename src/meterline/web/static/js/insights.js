/** Insights: the detectors' findings over the range, costliest first, each with its evidence, saving and fix. */
import { api, barChart, count, el, load, money, percent, requestsLink, stats } from "./core.js";

const insights = api("insights");
const NARROWING = ["feature", "app", "model", "provider"];

/** Where a finding is, as `feature x · model y` (what pins it down, unattributed spend by its key and app). */
function where(finding) {
  const parts = Object.entries(finding.where)
    .filter(([, value]) => typeof value === "string")
    .map(([name, value]) => `${name} ${value}`);
  return parts.join(" · ") || "(no attribution)";
}

/** The requests behind a finding: the range narrowed by the dimensions the finding names; null when it names none. */
function requestsOf(finding) {
  const named = NARROWING.filter((name) => finding.where[name]);
  return named.length ? requestsLink(Object.fromEntries(named.map((name) => [name, finding.where[name]]))) : null;
}

/** The one name a finding is shown by: its feature, else its app, else its key. */
function subject(finding) {
  return finding.where.feature ?? finding.where.app ?? finding.where.key_id ?? "(not set)";
}

function figure(name, value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  if (typeof value !== "number") return String(value);
  if (name.endsWith("_usd") || name.includes("usd_per")) return money(value);
  if (name === "growth" || name.startsWith("share")) return percent(value);
  return Number.isInteger(value) ? count(value) : value.toFixed(3);
}

function evidence(finding) {
  const rows = Object.entries(finding.evidence).flatMap(([name, value]) => [
    el("dt", {}, name.replaceAll("_", " ")),
    el("dd", {}, figure(name, value)),
  ]);
  return el("details", { class: "evidence" }, el("summary", {}, "Evidence"), el("dl", {}, ...rows));
}

function item(finding) {
  const link = requestsOf(finding);
  const saved = finding.saving_usd_per_month;
  const saving = saved === null ? "no direct saving" : `saves ${money(saved)}`;
  return el(
    "li",
    { class: "finding", "data-detector": finding.detector },
    el(
      "div",
      { class: "finding-money" },
      el("strong", {}, money(finding.usd_per_month)),
      el("small", {}, "a month"),
      el("small", {}, saving),
    ),
    el(
      "div",
      { class: "finding-body" },
      el("h3", {}, finding.title, el("span", { class: "detector" }, finding.detector)),
      el("p", { class: "where" }, link ? el("a", { href: link }, where(finding)) : where(finding)),
      el("p", {}, finding.summary),
      el("p", { class: "fix" }, el("strong", {}, "Fix: "), finding.fix),
      finding.assumptions && el("p", { class: "note" }, `Assumption: ${finding.assumptions}.`),
      evidence(finding),
    ),
  );
}

load("insight-stats", async (box) => {
  const body = await insights;
  stats(box, [
    ["Findings", count(body.findings.length), `over ${money(body.min_usd)} a month each`],
    ["At stake", money(body.total_usd_per_month), "a month, at this range's rate"],
    ["Estimated saving", money(body.total_saving_usd_per_month), "a month, if every fix is made"],
    ["Window", `${body.window_days.toFixed(1)} days`, `from ${body.since.slice(0, 16).replace("T", " ")} UTC`],
  ]);
});

load("insight-chart", async (box) => {
  const { findings } = await insights;
  barChart(box, findings, {
    value: (finding) => `${finding.detector} · ${subject(finding)}`,
    size: (finding) => finding.usd_per_month,
    target: requestsOf,
  });
});

load("insight-list", async (box) => {
  const { findings } = await insights;
  if (!findings.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No leaks found in this range"));
    return;
  }
  box.replaceChildren(el("ol", { class: "findings" }, ...findings.map(item)));
});
