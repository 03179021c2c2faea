"""Alert quality: replay the detector over a simulated store and score it against the injected incidents.

    python bench/alerts.py                       # simulate 30 days into a temp dir, replay every 15 minutes
    python bench/alerts.py --store sim.duckdb    # replay an existing `meterline simulate` store
    python bench/alerts.py --step 60             # replay hour by hour

The replay starts after the simulator's warm-up week and evaluates every `--step` minutes with the
real rules, hysteresis and cool-down (state in a temporary control database), exactly as the
server does every minute. An alert is a true positive when it fires between an incident's start
and an hour after its end, about one of the incident's targets (its feature, user, provider or
models; or the gateway as a whole); every other alert is a false positive. Printed: per incident
type, recall and the median delay from the incident's start to the first matching alert; per
rule, the alerts fired and their precision; and the totals.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterline.alerts.engine import Detector
from meterline.alerts.state import AlertStore
from meterline.config import AlertsConfig, StoreConfig
from meterline.pricing.table import PriceTable
from meterline.simulate import (
    INCIDENT_TYPES,
    PROVIDERS,
    WARMUP_DAYS,
    Incident,
    labels_path,
    read_labels,
    simulate,
    write_labels,
)
from meterline.store.control import ControlDB
from meterline.store.duckdb import DuckDBStore

GRACE = timedelta(hours=1)


def matches(alert: dict[str, object], incident: Incident) -> bool:
    fired = datetime.fromisoformat(str(alert["fired_at"]))
    return incident.start <= fired <= incident.end + GRACE and alert["value"] in incident.targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a store written by `meterline simulate` (default: simulate one)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--step", type=int, default=15, help="minutes between evaluations")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="meterline-bench-alerts-"))
    store_path = args.store
    if store_path is None:
        store_path = workdir / "sim.duckdb"
        store = DuckDBStore(StoreConfig(path=store_path))
        store.open()
        end = datetime(2026, 3, 30, tzinfo=UTC)
        began = time.perf_counter()
        written, incidents = simulate(
            store,
            PriceTable.load(None, PROVIDERS),
            days=args.days,
            end=end,
            kinds=list(INCIDENT_TYPES),
            seed=args.seed,
        )
        store.close()
        write_labels(labels_path(store_path), incidents, end - timedelta(days=args.days), end)
        print(f"simulated {args.days} days, {written:,} events in {time.perf_counter() - began:.1f} s")
    start, end, incidents = read_labels(labels_path(store_path))

    store = DuckDBStore(StoreConfig(path=store_path), read_only=True)
    store.open()
    config = AlertsConfig()
    state = AlertStore(ControlDB(workdir / "control.sqlite"), timedelta(minutes=config.cooldown_minutes))
    detector = Detector(store, config, "http://127.0.0.1:4000")
    at = start + timedelta(days=WARMUP_DAYS)
    evaluations = 0
    began = time.perf_counter()
    while at <= end:
        detector.step(state, at)
        evaluations += 1
        at += timedelta(minutes=args.step)
    elapsed = time.perf_counter() - began
    store.close()
    alerts = state.listing(end, limit=100_000)
    print(
        f"replayed {evaluations} evaluations every {args.step} min in {elapsed:.1f} s "
        f"({elapsed / evaluations * 1000:.0f} ms each); {len(alerts)} alerts fired"
    )

    by_type: dict[str, list[Incident]] = defaultdict(list)
    for incident in incidents:
        by_type[incident.kind].append(incident)
    print(f"\n{'incident':<18}{'start (UTC)':<18}{'about':<14}{'first alert':<26}{'delay':>8}")
    for incident in sorted(incidents, key=lambda item: item.start):
        matched = sorted((a for a in alerts if matches(a, incident)), key=lambda a: a["fired_at"])
        first = f"{matched[0]['rule']}" if matched else "(missed)"
        delay = (datetime.fromisoformat(matched[0]["fired_at"]) - incident.start) if matched else None
        about = incident.user or incident.feature or incident.provider or ""
        minutes = f"{delay.total_seconds() / 60:.0f} min" if delay is not None else "-"
        print(f"{incident.kind:<18}{incident.start:%m-%d %H:%M}{'':<7}{about:<14}{first:<26}{minutes:>8}")

    print(f"\n{'incident type':<18}{'incidents':>10}{'detected':>10}{'recall':>8}{'median delay':>14}")
    detected_total = 0
    delays_all: list[float] = []
    for kind in INCIDENT_TYPES:
        delays = []
        for incident in by_type.get(kind, []):
            fired = [datetime.fromisoformat(a["fired_at"]) for a in alerts if matches(a, incident)]
            if fired:
                delays.append((min(fired) - incident.start).total_seconds() / 60)
        detected_total += len(delays)
        delays_all += delays
        count = len(by_type.get(kind, []))
        median = f"{statistics.median(delays):.0f} min" if delays else "-"
        print(f"{kind:<18}{count:>10}{len(delays):>10}{len(delays) / count if count else 0:>8.2f}{median:>14}")

    print(f"\n{'rule':<26}{'alerts':>8}{'true':>6}{'precision':>11}")
    per_rule: dict[str, list[bool]] = defaultdict(list)
    false_positives = []
    for alert in alerts:
        true = any(matches(alert, incident) for incident in incidents)
        per_rule[alert["rule"]].append(true)
        if not true:
            false_positives.append(alert)
    for rule, outcomes in sorted(per_rule.items()):
        print(f"{rule:<26}{len(outcomes):>8}{sum(outcomes):>6}{sum(outcomes) / len(outcomes):>11.2f}")

    true_alerts = len(alerts) - len(false_positives)
    precision = true_alerts / len(alerts) if alerts else 1.0
    recall = detected_total / len(incidents) if incidents else 1.0
    median_delay = statistics.median(delays_all) if delays_all else float("nan")
    print(
        f"\nTOTAL  recall {recall:.2f} ({detected_total}/{len(incidents)})  precision {precision:.2f} "
        f"({true_alerts}/{len(alerts)})  median detection delay {median_delay:.0f} min"
    )
    for alert in false_positives:
        print(f"  false positive: {alert['fired_at'][:16]} {alert['rule']} {alert['value']}: {alert['summary'][:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
