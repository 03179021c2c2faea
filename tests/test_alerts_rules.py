"""The alert rules on crafted traffic in a real DuckDB file: each fires on its condition and stays quiet without it;
hysteresis across flapping input; `meterline simulate` and `meterline alerts check --at`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from meterline.alerts.engine import Detector
from meterline.alerts.rules import Finding
from meterline.alerts.state import AlertStore
from meterline.config import AlertsConfig, StoreConfig
from meterline.store.control import ControlDB
from meterline.store.duckdb import DuckDBStore
from tests.alerts_traffic import AT, Traffic, steady
from tests.conftest import run_cli

LAST_HOUR = AT - timedelta(hours=1)
LAST_15_MIN = AT - timedelta(minutes=15)


def findings(tmp_path: Path, traffic: Traffic) -> list[Finding]:
    path = traffic.write(tmp_path / "events.duckdb")
    store = DuckDBStore(StoreConfig(path=path), read_only=True)
    store.open()
    try:
        return Detector(store, AlertsConfig(), "http://dash.example").findings(AT)
    finally:
        store.close()


def fired(tmp_path: Path, traffic: Traffic, rule: str) -> list[Finding]:
    return [finding for finding in findings(tmp_path, traffic) if finding.rule == rule]


def history(**options: object) -> Traffic:
    """Steady traffic up to the last hour."""
    return steady(LAST_HOUR, **options)  # type: ignore[arg-type]


def test_normal_traffic_raises_nothing(tmp_path: Path) -> None:
    traffic = history(hit_every=2).calls(LAST_HOUR, AT, 60, hit_every=2)
    assert findings(tmp_path, traffic) == []


def test_feature_cost_above_its_band_fires_with_baseline_band_and_link(tmp_path: Path) -> None:
    (finding,) = fired(tmp_path, history().calls(LAST_HOUR, AT, 60, cost=0.05), "feature_anomaly")
    assert (finding.dimension, finding.value) == ("feature", "search")
    assert finding.observed == pytest.approx(3.0)
    assert 0.6 < finding.baseline < 0.65  # 70, 50 and 70 calls at $0.01 in the hours around 11:00 on weekdays
    assert finding.baseline < finding.band < finding.observed
    assert "same hour of day (±1 h) on the previous 5 weekdays" in finding.baseline_basis
    assert finding.usd_at_stake == pytest.approx(3.0 - finding.baseline)
    assert finding.link.startswith("http://dash.example/features?") and "feature=search" in finding.link


def test_feature_cost_inside_its_band_does_not_fire(tmp_path: Path) -> None:
    assert fired(tmp_path, history().calls(LAST_HOUR, AT, 60, cost=0.014), "feature_anomaly") == []


def test_runaway_user_fires_and_a_tiny_user_under_the_floor_does_not(tmp_path: Path) -> None:
    traffic = history(users=10).calls(LAST_HOUR, AT, 60, users=10)
    traffic.calls(LAST_HOUR, AT, 300, user="user-3", feature="agent")  # $3 in an hour against about $0.06
    traffic.calls(LAST_HOUR, AT, 90, user="user-4", feature="agent")  # 15x, but $0.90 is under the $1 floor
    (finding,) = fired(tmp_path, traffic, "user_runaway")
    assert (finding.value, finding.unit) == ("user-3", "usd/hour")
    assert finding.observed >= 10 * finding.baseline


def test_spend_rate_fires_at_twice_the_usual_hour_and_not_at_one_and_a_half(tmp_path: Path) -> None:
    (finding,) = fired(tmp_path, history().calls(LAST_HOUR, AT, 200, cost=0.01), "spend_rate")
    assert finding.value == "gateway" and finding.observed / finding.baseline > 2
    assert fired(tmp_path / "calm", history().calls(LAST_HOUR, AT, 95, cost=0.01), "spend_rate") == []


def test_cache_hit_rate_collapse_fires_and_a_small_dip_does_not(tmp_path: Path) -> None:
    (finding,) = fired(tmp_path, history(hit_every=2).calls(LAST_HOUR, AT, 60), "cache_hit_rate")
    assert finding.observed == 0 and finding.baseline == pytest.approx(0.5, abs=0.01)
    assert finding.usd_at_stake > 0
    dip = history(hit_every=2).calls(LAST_HOUR, AT, 60, hit_every=3)
    assert fired(tmp_path / "dip", dip, "cache_hit_rate") == []


def test_slow_model_fires_on_p95_over_30_seconds(tmp_path: Path) -> None:
    traffic = history().calls(LAST_HOUR, LAST_15_MIN, 60).calls(LAST_15_MIN, AT, 40, model="gpt-4o", duration_ms=45_000)
    (finding,) = fired(tmp_path, traffic, "latency_p95")
    assert (finding.value, finding.observed) == ("gpt-4o", pytest.approx(45_000))
    quick = history().calls(LAST_HOUR, AT, 60, model="gpt-4o", duration_ms=20_000)
    assert fired(tmp_path / "quick", quick, "latency_p95") == []


def test_provider_error_rate_over_5_percent_fires(tmp_path: Path) -> None:
    traffic = (
        history()
        .calls(LAST_HOUR, AT, 60)
        .calls(LAST_15_MIN, AT, 160, model="claude-haiku-4-5", failed_attempts=1, feature="support")
    )
    (finding,) = fired(tmp_path, traffic, "error_rate")
    assert finding.value == "anthropic" and finding.observed == pytest.approx(0.5)
    healthy = history().calls(LAST_HOUR, AT, 60).calls(LAST_15_MIN, AT, 160, model="claude-haiku-4-5")
    assert fired(tmp_path / "healthy", healthy, "error_rate") == []


def test_retry_amplification_fires_above_one_and_a_half_attempts_per_request(tmp_path: Path) -> None:
    (finding,) = fired(tmp_path, history().calls(LAST_HOUR, AT, 60, failed_attempts=1), "retry_amplification")
    assert finding.value == "search" and finding.observed == pytest.approx(2.0)
    some_retries = history().calls(LAST_HOUR, AT, 40).calls(LAST_HOUR, AT, 20, failed_attempts=1)
    assert fired(tmp_path / "some", some_retries, "retry_amplification") == []


def test_prompt_bloat_fires_when_cost_per_request_doubles_at_flat_volume_but_not_on_growth(tmp_path: Path) -> None:
    (finding,) = fired(tmp_path, history().calls(LAST_HOUR, AT, 60, cost=0.03), "prompt_bloat")
    assert finding.observed == pytest.approx(0.03) and finding.baseline == pytest.approx(0.01)
    growth = history().calls(LAST_HOUR, AT, 180, cost=0.01)  # three times the requests at the same price each
    assert fired(tmp_path / "growth", growth, "prompt_bloat") == []


def test_latency_cost_divergence_names_queueing_and_payload_growth(tmp_path: Path) -> None:
    (queueing,) = fired(tmp_path, history().calls(LAST_HOUR, AT, 60, duration_ms=3200), "latency_cost_divergence")
    assert queueing.signal == "queueing" and queueing.key.endswith(":queueing")
    payload = history().calls(LAST_HOUR, AT, 60, cost=0.03)
    (growth,) = fired(tmp_path / "payload", payload, "latency_cost_divergence")
    assert growth.signal == "payload_growth"
    both = history().calls(LAST_HOUR, AT, 60, cost=0.03, duration_ms=2400)
    assert fired(tmp_path / "both", both, "latency_cost_divergence") == []


# ---- hysteresis -------------------------------------------------------------------------------


def finding(value: str = "search") -> Finding:
    return Finding(
        "feature_anomaly",
        "feature",
        value,
        "search costs too much",
        3.0,
        0.6,
        0.9,
        "usd/hour",
        "b",
        2.4,
        "http://dash.example/features",
    )


def test_an_alert_fires_once_stays_firing_through_flapping_and_resolves_after_the_cooldown(tmp_path: Path) -> None:
    state = AlertStore(ControlDB(tmp_path / "control.sqlite"), cooldown=timedelta(minutes=15))
    minute = timedelta(minutes=1)
    condition = [True, True, False, True, False, False, True] + [False] * 20  # flaps, then clears for good
    transitions: list[tuple[int, str]] = []
    for index, holds in enumerate(condition):
        for transition in state.apply([finding()] if holds else [], AT + index * minute):
            transitions.append((index, transition.state))
    assert transitions == [(0, "firing"), (6 + 15, "resolved")]
    (alert,) = state.listing(AT + 30 * minute)
    assert (alert["state"], alert["fired_at"], alert["resolved_at"]) == (
        "resolved",
        AT.isoformat(),
        (AT + 21 * minute).isoformat(),
    )
    # the same condition after it resolved is a new alert
    (again,) = state.apply([finding()], AT + 40 * minute)
    assert again.state == "firing" and again.alert["id"] != alert["id"]


def test_alerts_of_different_values_are_separate(tmp_path: Path) -> None:
    state = AlertStore(ControlDB(tmp_path / "control.sqlite"), cooldown=timedelta(minutes=15))
    opened = state.apply([finding("search"), finding("chat")], AT)
    assert sorted(t.alert["value"] for t in opened) == ["chat", "search"]
    assert state.apply([finding("search")], AT + timedelta(minutes=10)) == []
    (resolved,) = state.apply([finding("search")], AT + timedelta(minutes=15))
    assert (resolved.state, resolved.alert["value"]) == ("resolved", "chat")


# ---- the simulator and the CLI ----------------------------------------------------------------


def test_simulate_writes_labelled_incidents_and_alerts_check_replays_them(tmp_path: Path) -> None:
    store = tmp_path / "sim.duckdb"
    made = run_cli(
        "simulate",
        "--store",
        str(store),
        "--days",
        "9",
        "--incidents",
        "model_swap",
        "--per-type",
        "1",
        "--end",
        "2026-05-10T00:00:00Z",
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "model_swap" in made.stdout
    (incident,) = orjson.loads((tmp_path / "sim.duckdb.incidents.json").read_bytes())["incidents"]
    (tmp_path / "meterline.yaml").write_text(f"store: {{path: {store}}}\n")
    during = run_cli("alerts", "check", "--at", incident["end"], "--json", cwd=tmp_path)
    assert during.returncode == 2, during.stderr
    found = orjson.loads(during.stdout)["data"]
    assert any(item["value"] == incident["feature"] and item["rule"] == "feature_anomaly" for item in found)
    before = run_cli("alerts", "check", "--at", incident["start"], cwd=tmp_path)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "no alert conditions" in before.stdout


def test_alerts_check_names_a_bad_time(tmp_path: Path) -> None:
    (tmp_path / "meterline.yaml").write_text("store: {path: ./none.duckdb}\n")
    result = run_cli("alerts", "check", "--at", "yesterday-ish", cwd=tmp_path)
    assert result.returncode == 1 and "'at' must be an ISO-8601 time" in result.stderr
