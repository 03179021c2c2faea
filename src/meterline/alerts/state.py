"""Alert state in the control database: hysteresis, silences and acknowledgements, and delivery records.

An alert is identified by its key (rule, dimension value, signal). `AlertStore.apply` takes one
evaluation's findings at an instant and moves the state on:

- a finding with no firing alert of its key opens one (`firing`): that is the one notification;
- a finding whose alert is firing refreshes it (`last_seen_at`, latest figures): no notification;
- a firing alert whose condition has been clear for the cool-down resolves (`resolved`): the
  second notification. A condition that flaps back within the cool-down never left `firing`, so
  flapping does not re-fire.

Budget thresholds come from the gateway's budget guard as notices (`open_budget_alert`); they
resolve when their budget period ends. A silence mutes notifications for an alert's key until a
time (the alert itself is still tracked and listed); acknowledging also records who took it.
Times are stored as ISO-8601 UTC text, which sorts as time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from meterline.alerts.rules import Finding
from meterline.store.control import ControlDB

BUDGET_KINDS = ("budget_threshold", "budget_exceeded")
STATES = ("firing", "resolved")

_TABLES = (
    """CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        rule TEXT NOT NULL,
        dimension TEXT NOT NULL,
        value TEXT NOT NULL,
        state TEXT NOT NULL,
        fired_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        resolved_at TEXT,
        summary TEXT NOT NULL,
        details TEXT NOT NULL,
        acknowledged_at TEXT,
        acknowledged_by TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_firing ON alerts (key) WHERE state = 'firing'",
    "CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (fired_at)",
    """CREATE TABLE IF NOT EXISTS alert_silences (
        key TEXT PRIMARY KEY,
        until TEXT NOT NULL,
        by TEXT NOT NULL,
        note TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS alert_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id INTEGER,
        notice_kind TEXT NOT NULL,
        notifier TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alert_deliveries_by_alert ON alert_deliveries (alert_id)",
)


_DELIVERY_FIELDS = ("notice_kind", "notifier", "status", "attempts", "last_error", "updated_at")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class AlertNotFound(LookupError):
    """No alert has the id given."""


@dataclass(frozen=True)
class Transition:
    """An alert that fired or resolved in this evaluation: what notifiers hear about."""

    state: str
    alert: dict[str, Any]


class AlertStore:
    def __init__(self, control: ControlDB, cooldown: timedelta) -> None:
        self.control = control
        self.cooldown = cooldown
        control.ensure(*_TABLES)

    def apply(self, findings: list[Finding], at: datetime) -> list[Transition]:
        """Move the state on by one evaluation at `at` (see the module docstring)."""
        by_key = {finding.key: finding for finding in findings}
        transitions: list[Transition] = []
        now = iso(at)
        with self.control.transaction() as connection:
            firing = connection.execute(
                "SELECT * FROM alerts WHERE state = 'firing' AND rule NOT IN (?, ?)", BUDGET_KINDS
            ).fetchall()
            open_keys = {row["key"] for row in firing}
            for row in firing:
                finding = by_key.get(row["key"])
                if finding is not None:
                    connection.execute(
                        "UPDATE alerts SET last_seen_at = ?, summary = ?, details = ? WHERE id = ?",
                        (now, finding.summary, _details(finding), row["id"]),
                    )
                elif at - datetime.fromisoformat(row["last_seen_at"]) >= self.cooldown:
                    connection.execute(
                        "UPDATE alerts SET state = 'resolved', resolved_at = ? WHERE id = ?", (now, row["id"])
                    )
                    transitions.append(Transition("resolved", self._row(connection, row["id"])))
            for key, finding in by_key.items():
                if key in open_keys:
                    continue
                cursor = connection.execute(
                    "INSERT INTO alerts (key, rule, dimension, value, state, fired_at, last_seen_at, summary, details) "
                    "VALUES (?, ?, ?, ?, 'firing', ?, ?, ?, ?)",
                    (key, finding.rule, finding.dimension, finding.value, now, now, finding.summary, _details(finding)),
                )
                transitions.append(Transition("firing", self._row(connection, cursor.lastrowid)))
            transitions.extend(self._end_budget_periods(connection, at))
        return transitions

    def _end_budget_periods(self, connection: Any, at: datetime) -> list[Transition]:
        ended = []
        rows = connection.execute(
            "SELECT id, details FROM alerts WHERE state = 'firing' AND rule IN (?, ?)", BUDGET_KINDS
        ).fetchall()
        for row in rows:
            period_end = orjson.loads(row["details"]).get("period_end")
            if period_end and datetime.fromisoformat(period_end) <= at:
                connection.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = ? WHERE id = ?", (iso(at), row["id"])
                )
                ended.append(Transition("resolved", self._row(connection, row["id"])))
        return ended

    def open_budget_alert(self, kind: str, subject: str, message: str, details: dict[str, Any], at: datetime) -> int:
        """Record a budget notice as a firing alert (once per budget, threshold and period); returns its id."""
        mark = "exceeded" if kind == "budget_exceeded" else f"{details.get('threshold', 0):g}%"
        key = f"{kind}:budget={subject}:{mark}:{details.get('period_start', '')}"
        with self.control.transaction() as connection:
            row = connection.execute("SELECT id FROM alerts WHERE key = ? ORDER BY id DESC LIMIT 1", (key,)).fetchone()
            if row is not None:
                return int(row["id"])
            figures = {
                "observed": details.get("spent_usd"),
                "baseline": None,
                "band": details.get("limit_usd"),
                "unit": "usd/period",
                "baseline_basis": f"the budget's {details.get('period', '')} limit",
                "usd_at_stake": details.get("spent_usd"),
                "link": None,
                **details,
            }
            cursor = connection.execute(
                "INSERT INTO alerts (key, rule, dimension, value, state, fired_at, last_seen_at, summary, details) "
                "VALUES (?, ?, 'budget', ?, 'firing', ?, ?, ?, ?)",
                (key, kind, subject, iso(at), iso(at), message, orjson.dumps(figures).decode()),
            )
            return int(cursor.lastrowid or 0)

    def _row(self, connection: Any, alert_id: int | None) -> dict[str, Any]:
        row = connection.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _alert(row)

    # ---- reading ----------------------------------------------------------------------------

    def get(self, alert_id: int) -> dict[str, Any]:
        rows = self.control.rows("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        if not rows:
            raise AlertNotFound(f"no alert has id {alert_id}")
        return _alert(rows[0])

    def listing(self, at: datetime, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts newest first, each with its silence (if one is in force at `at`) and its deliveries."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = self.control.rows(f"SELECT * FROM alerts {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        alerts = [_alert(row) for row in rows]
        if not alerts:
            return alerts
        silences = {
            row["key"]: dict(row)
            for row in self.control.rows("SELECT * FROM alert_silences WHERE until > ?", (iso(at),))
        }
        marks = ",".join("?" * len(alerts))
        deliveries: dict[int, list[dict[str, Any]]] = {}
        for row in self.control.rows(
            f"SELECT * FROM alert_deliveries WHERE alert_id IN ({marks}) ORDER BY id", [a["id"] for a in alerts]
        ):
            deliveries.setdefault(row["alert_id"], []).append({name: row[name] for name in _DELIVERY_FIELDS})
        for alert in alerts:
            silence = silences.get(alert["key"])
            alert["silenced_until"] = silence["until"] if silence else None
            alert["silenced_by"] = silence["by"] if silence else None
            alert["silence_note"] = silence["note"] if silence else None
            alert["deliveries"] = deliveries.get(alert["id"], [])
        return alerts

    def silenced(self, key: str, at: datetime) -> bool:
        return bool(self.control.rows("SELECT 1 FROM alert_silences WHERE key = ? AND until > ?", (key, iso(at))))

    # ---- people acting on alerts ------------------------------------------------------------

    def silence(
        self,
        alert_id: int,
        until: datetime,
        by: str,
        note: str = "",
        acknowledge: bool = False,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Mute notifications for the alert's key until `until`; `acknowledge` also records who took it."""
        alert = self.get(alert_id)
        with self.control.transaction() as connection:
            connection.execute(
                "INSERT INTO alert_silences (key, until, by, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = excluded.until, by = excluded.by, note = excluded.note",
                (alert["key"], iso(until), by, note),
            )
            if acknowledge:
                connection.execute(
                    "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
                    (iso(at or datetime.now(UTC)), by, alert_id),
                )
        return self.get(alert_id)

    def unsilence(self, alert_id: int) -> dict[str, Any]:
        alert = self.get(alert_id)
        with self.control.transaction() as connection:
            connection.execute("DELETE FROM alert_silences WHERE key = ?", (alert["key"],))
        return alert

    def record_delivery(
        self,
        alert_id: int | None,
        notice_kind: str,
        notifier: str,
        status: str,
        attempts: int,
        last_error: str | None,
        at: datetime,
    ) -> None:
        with self.control.transaction() as connection:
            connection.execute(
                "INSERT INTO alert_deliveries (alert_id, notice_kind, notifier, status, attempts, last_error, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (alert_id, notice_kind, notifier, status, attempts, last_error, iso(at)),
            )


def _details(finding: Finding) -> str:
    return orjson.dumps(finding.as_json()).decode()


def _alert(row: Any) -> dict[str, Any]:
    alert = dict(row)
    alert["details"] = orjson.loads(alert["details"])
    return alert
