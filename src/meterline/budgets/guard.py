"""The spend guard: admits each call against the budgets, rate limits and agent guardrails that apply, and settles it.

`admit(call)` runs before the upstream call. It finds what applies — the budgets of the call's
key, team, app, user, feature and model and of the whole gateway, the user's and the key's rate
limits, the agent run's guardrails — and reserves the call's estimate on all their counters at
once: input tokens estimated from the request's text, output tokens from its max_tokens (else
`budgets.default_output_tokens`), priced by the price table. When a counter would pass a limit,
nothing is reserved, and the call is either downgraded (a `downgrade` budget mapping its model
to a cheaper one: the cheaper model is estimated and tried instead) or refused with `Refused`:
429 with Retry-After for `throttle` and rate limits, 402 for `block`, 400 for an agent guardrail
(a run's limits do not reset with time, so a retry cannot succeed and SDKs should not retry).
Because every call reserves before it goes upstream, concurrent calls can pass a budget only by
what their estimates fall short of their real cost. `settle(admission, events)` then replaces
the reservation with the cost and tokens of the attempts recorded. Spend made off the request
path, a finished batch's results, is added with `charge(events)` when it is metered; a batch's
creation is refused while a `throttle` or `block` budget it falls under is spent
(`refuse_if_spent`).

A budget with `alert` notifies when its spend crosses each threshold and when it first refuses a
call, once per period; an agent guardrail notifies once per run and setting. With nothing that
applies, `admit` costs one check of the control database. If the counters' backend does not
answer, calls are admitted and the failure is logged: metering never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from meterline.alerts.notices import NoticeBoard
from meterline.alerts.notifiers import Notice
from meterline.budgets.agents import Guardrails, recent_runs
from meterline.budgets.counters import Counters, CountersUnavailable, Exceeded, Line, Totals, passed_limit
from meterline.budgets.quotas import MINUTE_S, KeyLimits, Quota, key_quota, user_quota
from meterline.budgets.rules import (
    BudgetIndex,
    PeriodClock,
    budget_key,
    budget_row,
    describe,
    format_usd,
    limit_text,
    percent_used,
    period_spend,
)
from meterline.budgets.store import BudgetStore
from meterline.config import BudgetConfig, Config
from meterline.events.schema import UsageEvent
from meterline.outages import OutageLog
from meterline.pricing.table import PriceTable
from meterline.providers.base import ApiError, Dialect, ProviderFamily
from meterline.providers.estimate import estimate_tokens
from meterline.store.base import Store, StoreUnavailable

log = logging.getLogger("meterline.budgets")

GRACE_S = 3600
"""How long a period's counter outlives the period, for calls that started in it and settle later."""
_MAX_REMEMBERED_RUN_NOTICES = 10_000
_MAX_REMEMBERED = 10_000


class Labels(Protocol):
    @property
    def feature(self) -> str | None: ...

    @property
    def agent_run_id(self) -> str | None: ...


class Call(Protocol):
    """What the guard reads of a gateway call (`meterline.gateway.metering.CallContext` is one)."""

    @property
    def operation(self) -> str: ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def requested_model(self) -> str: ...

    @property
    def identity(self) -> KeyLimits: ...

    @property
    def attribution(self) -> Labels: ...

    @property
    def team(self) -> str | None: ...

    @property
    def app(self) -> str | None: ...

    @property
    def user(self) -> str | None: ...


Spender = tuple[str | None, str | None, str | None, str | None, str | None]
"""Whose spend it is: (key id, team, app, user, feature)."""


def spender_of(call: Call) -> Spender:
    return (call.identity.key_id, call.team, call.app, call.user, call.attribution.feature)


class Refused(Exception):
    """A call turned away before it goes upstream; `error` is what the client gets."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _BudgetCharge:
    """The counter of budgets sharing one scope and period, and those of them whose limits it enforces."""

    start: float
    end: float
    budgets: list[BudgetConfig] = field(default_factory=list)
    enforced: list[BudgetConfig] = field(default_factory=list)


class _QuotaCharge(NamedTuple):
    quota: Quota
    end: float


class _RunCharge(NamedTuple):
    run_id: str
    loop: bool
    """The run's loop-detector counter for this prompt, rather than the run's own."""


_Charge = _BudgetCharge | _QuotaCharge | _RunCharge


@dataclass(frozen=True)
class Admission:
    """A call let through: the counters it reserved on, why, and what it reserved (USD, tokens)."""

    lines: list[Line]
    charges: list[_Charge]
    reserved: tuple[float, int]
    served_model: str | None
    """The cheaper model to serve instead of the requested one, when a budget downgraded the call."""


class _Prompt:
    """A call's prompt text and token estimate, worked out only if something needs them."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self._text: str | None = None
        self._tokens: int | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = self.call.dialect.request_text(self.call.operation, self.call.body)
        return self._text

    def tokens(self) -> int:
        if self._tokens is None:
            self._tokens = estimate_tokens(self.text())
        return self._tokens


class SpendGuard:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, ProviderFamily],
        price_table: PriceTable,
        counters: Counters,
        budget_store: BudgetStore,
        notices: NoticeBoard,
        store: Store | None,
    ) -> None:
        """`store` is where counters new to the backend are seeded from (None: a worker without the store)."""
        self.config = config
        self.settings = config.budgets
        self.prefix = config.budgets.key_prefix
        self.providers = providers
        self.price_table = price_table
        self.counters = counters
        self.budget_store = budget_store
        self.notices = notices
        self.store = store
        self.clock = PeriodClock(config.budgets.timezone)
        self.guardrails = Guardrails(config.budgets.agents, self.prefix)
        self._models = {model.name: model for model in config.models}
        self._sourced: list[tuple[BudgetConfig, str]] = []
        self._index = BudgetIndex(())
        self._anything = False
        self._alerted: dict[tuple[str, float], float] = {}
        self._remembered: dict[tuple[str | None, ...], tuple[list[_Charge], list[Line]]] = {}
        self._remembered_minute = 0
        self._run_noticed: set[tuple[str, str]] = set()
        self._refresh_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outage = OutageLog(log, logging.ERROR)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the counters, load the budgets and seed their counters (and agent runs) from the event store."""
        await self.counters.start()
        await self.refresh()
        if self.guardrails.enabled and not self.counters.persistent and self.store is not None:
            now = time.time()
            since = datetime.fromtimestamp(now - self.guardrails.ttl_s, UTC)
            for run_id, totals in await asyncio.to_thread(recent_runs, self.store, since):
                await self.counters.seed(self.guardrails.run_key(run_id), totals, self.guardrails.ttl_s)

    async def stop(self) -> None:
        """Finish pending settles and notices."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.counters.close()
        await self.notices.close()

    async def refresh(self) -> None:
        """Reload the run-time budgets; seed the counters of budgets new to this process from the event store."""
        async with self._refresh_lock:
            self.budget_store.changed()  # what is read now is current
            sourced = await asyncio.to_thread(self.budget_store.list)
            await self._seed([budget for budget, _ in sourced])
            self._sourced = sourced
            self._index = BudgetIndex(budget for budget, _ in sourced)
            self._remembered = {}
            self._anything = bool(sourced) or self.settings.declares_limits

    async def _seed(self, budgets: Iterable[BudgetConfig]) -> None:
        if self.store is None:
            return
        store = self.store
        now = time.time()
        wanted: dict[str, tuple[BudgetConfig, float, float]] = {}
        for budget in budgets:
            start, end = self.clock.bounds(budget.period, now)
            wanted.setdefault(budget_key(self.prefix, budget, start), (budget, start, end))
        try:
            existing = await self.counters.totals(list(wanted))
            for (key, (budget, start, end)), totals in zip(wanted.items(), existing, strict=True):
                if totals is None:
                    since = datetime.fromtimestamp(start, UTC)
                    try:
                        usd, tokens, requests = await asyncio.to_thread(period_spend, store, budget, since)
                    except StoreUnavailable as exc:
                        log.warning("%s counts from zero: its spend so far cannot be read (%s)", describe(budget), exc)
                        continue
                    await self.counters.seed(
                        key, Totals(usd, 0.0, tokens, 0, requests, start), int(end - now) + GRACE_S
                    )
        except CountersUnavailable as exc:
            self._unavailable(exc)

    # ---- admit and settle ---------------------------------------------------------------------

    async def admit(self, call: Call, *, spends: bool = True) -> Admission | None:
        """Reserve the call's estimate on every counter that applies; None when nothing applies.

        A call that `spends` nothing (a cache hit) meets no budget; it still counts as a request
        towards rate limits and as a step of its agent run (loop detection included).
        """
        await self._reload_if_changed()
        identity = call.identity
        if not self._anything and identity.rpm_limit is None and identity.tpm_limit is None:
            return None
        now = time.time()
        prompt = _Prompt(call)
        model = call.requested_model
        downgraded: set[str] = set()
        while True:
            charges, lines = self._charges(call, model, downgraded, prompt, now, spends)
            if not lines:
                return None
            usd, tokens = 0.0, 0
            if spends and any(line.limit_usd is not None or line.limit_tokens is not None for line in lines):
                usd, tokens = self._estimate(call, model, prompt.tokens(), now)
            try:
                refused = await self.counters.reserve(lines, usd, tokens, now)
            except CountersUnavailable as exc:
                self._unavailable(exc)
                return None
            if refused is not None:
                model = self._downgrade_or_refuse(
                    call, charges[refused.index], refused, model, downgraded, usd, tokens, now
                )
                continue
            served = model if model != call.requested_model else None
            return Admission(lines, charges, (usd, tokens), served)

    def settle(self, admission: Admission, events: list[UsageEvent]) -> None:
        """Replace the reservation with what the call's recorded attempts cost (none recorded: nothing)."""
        usd = sum(event.cost_usd or 0.0 for event in events)
        tokens = sum(event.input_tokens + event.output_tokens for event in events)
        self.counters.settle(
            admission.lines, admission.reserved, (usd, tokens), lambda totals: self._settled(admission, totals)
        )

    async def refuse_if_spent(self, spender: Spender, operation: str, model: str) -> None:
        """Raise `Refused` when a `throttle` or `block` budget of this spender and model is already
        spent; for work whose cost is known only later (a batch), so nothing is reserved."""
        await self._reload_if_changed()
        if not self._index.budgets:
            return
        now = time.time()
        no_downgrades = {budget.name for budget, _ in self._sourced}  # a batch runs the model its file names
        charges, lines = self._budget_charges(spender, operation, model, no_downgrades, _minute(now), now)
        try:
            found = await self.counters.totals([line.key for line in lines])
        except CountersUnavailable as exc:
            self._unavailable(exc)
            return
        for charge, line, totals in zip(charges, lines, found, strict=True):
            limit = passed_limit(line, totals, 0.0, 0, now) if totals is not None else None
            if limit is not None and isinstance(charge, _BudgetCharge):
                budget = _tightest(charge.enforced, limit)
                raise self._budget_refusal(budget, charge, totals, limit, (0.0, 0), now)

    async def charge(self, events: Sequence[UsageEvent]) -> None:
        """Add what calls made off the request path cost (a finished batch's results) to their budgets.

        Nothing is refused, since the money is spent: each event is counted on its budgets' counters
        as a request with its cost and tokens, and a threshold it crosses alerts as for any call.
        """
        await self._reload_if_changed()
        if not self._index.budgets:
            return
        now = time.time()
        charged = []
        for event in events:
            spender = (event.key_id, event.team, event.app, event.user, event.feature)
            charges, lines = self._budget_charges(
                spender, event.operation, event.requested_model, set(), _minute(now), now
            )
            if lines:
                charged.append((event, charges, lines))
        try:  # a request on each counter, limits aside, so that settling adds what it spent; at once,
            # so that Redis counters take them in a few script calls rather than one per result
            await asyncio.gather(
                *(
                    self.counters.reserve([Line(line.key, line.ttl_s) for line in lines], 0.0, 0, now)
                    for *_, lines in charged
                )
            )
        except CountersUnavailable as exc:
            self._unavailable(exc)
            return
        for event, charges, lines in charged:
            self.settle(Admission(lines, charges, (0.0, 0), None), [event])

    async def _reload_if_changed(self) -> None:
        """Reload the budgets if the control database changed since the last look."""
        if self.budget_store.changed():
            await self.refresh()

    def _charges(
        self, call: Call, model: str, downgraded: set[str], prompt: _Prompt, now: float, spends: bool
    ) -> tuple[list[_Charge], list[Line]]:
        """The counters this call touches (budgets, rate limits, its agent run) and why, in the same order."""
        minute = _minute(now)
        charges: list[_Charge] = []
        lines: list[Line] = []
        if self._index.budgets and spends:
            charges, lines = self._budget_charges(spender_of(call), call.operation, model, downgraded, minute, now)
        for quota in (user_quota(self.prefix, self.settings.quotas, call.user), key_quota(self.prefix, call.identity)):
            if quota is not None:
                lines.append(quota.line(minute))
                charges.append(_QuotaCharge(quota, minute + MINUTE_S))
        run_id = call.attribution.agent_run_id
        if run_id is not None and self.guardrails.enabled:
            lines.append(self.guardrails.run_line(run_id))
            charges.append(_RunCharge(run_id, loop=False))
            loop_line = self.guardrails.loop_line(run_id, model, prompt.text())
            if loop_line is not None:
                lines.append(loop_line)
                charges.append(_RunCharge(run_id, loop=True))
        return charges, lines

    def _budget_charges(
        self, spender: Spender, operation: str, model: str, downgraded: set[str], minute: int, now: float
    ) -> tuple[list[_Charge], list[Line]]:
        """The budgets' counters of a call. Periods start on whole minutes, so the answer for the same
        attribution, model and endpoint holds for the rest of the minute and is remembered until then."""
        remembered = (*spender, model, operation) if not downgraded else None
        if minute != self._remembered_minute:
            self._remembered_minute, self._remembered = minute, {}
        if remembered in self._remembered:
            charges, lines = self._remembered[remembered]
            return list(charges), list(lines)
        values = dict(zip(("key", "team", "app", "user", "feature", "model"), (*spender, model), strict=True))
        by_key: dict[str, _BudgetCharge] = {}
        for budget in self._index.applicable(values):
            start, end = self.clock.bounds(budget.period, now)
            key = budget_key(self.prefix, budget, start)
            charge = by_key.get(key)
            if charge is None:
                charge = by_key[key] = _BudgetCharge(start, end)
            charge.budgets.append(budget)
            if (
                "throttle" in budget.actions
                or "block" in budget.actions
                or self._downgrades(budget, operation, model, downgraded)
            ):
                charge.enforced.append(budget)
        charges: list[_Charge] = []
        lines: list[Line] = []
        for key, charge in by_key.items():
            limit_usd = min((b.limit_usd for b in charge.enforced if b.limit_usd is not None), default=None)
            limit_tokens = min((b.limit_tokens for b in charge.enforced if b.limit_tokens is not None), default=None)
            lines.append(Line(key, int(charge.end - minute) + GRACE_S, limit_usd, limit_tokens))
            charges.append(charge)
        if remembered is not None and len(self._remembered) < _MAX_REMEMBERED:
            self._remembered[remembered] = (charges, lines)
        return list(charges), list(lines)

    def _downgrades(self, budget: BudgetConfig, operation: str, model: str, downgraded: set[str]) -> bool:
        """Whether over this budget the call would be served by a cheaper model instead."""
        target = budget.downgrade.get(model)
        if target is None or budget.name in downgraded:
            return False
        return operation in self.providers[self._models[target].provider].operations

    def _estimate(self, call: Call, model: str, input_tokens: int, now: float) -> tuple[float, int]:
        """(USD, tokens) a call to `model` may cost: its input, and max_tokens (or the default) of output."""
        output_tokens = 0
        if call.operation != "embeddings":
            output_tokens = call.dialect.max_output_tokens(call.body) or self.settings.default_output_tokens
        configured = self._models[model]
        priced = self.price_table.price(
            configured.provider,
            configured.upstream_name,
            datetime.fromtimestamp(now, UTC),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        return (priced.cost_usd if priced else 0.0), input_tokens + output_tokens

    # ---- refusals -----------------------------------------------------------------------------

    def _downgrade_or_refuse(
        self,
        call: Call,
        charge: _Charge,
        exceeded: Exceeded,
        model: str,
        downgraded: set[str],
        usd: float,
        tokens: int,
        now: float,
    ) -> str:
        """The cheaper model to try when a downgrade budget is over; otherwise raise `Refused`."""
        if isinstance(charge, _QuotaCharge):
            message = charge.quota.refusal(exceeded.limit, exceeded.totals, tokens, self.clock.iso(charge.end))
            raise Refused(ApiError(429, message, "rate_limit_exceeded", headers=_retry_after(charge.end, now)))
        if isinstance(charge, _RunCharge):
            setting = self.guardrails.setting(exceeded.limit, charge.loop)
            message = self.guardrails.message(charge.run_id, setting, exceeded.totals, now, usd)
            self._run_notice(charge.run_id, setting, f"{message}; the step was refused")
            raise Refused(ApiError(400, f"{message}; start a new run or raise the limit", "agent_limit_exceeded"))
        budget = _tightest(charge.enforced, exceeded.limit)
        if self._downgrades(budget, call.operation, model, downgraded):
            downgraded.add(budget.name)
            return budget.downgrade[model]
        raise self._budget_refusal(budget, charge, exceeded.totals, exceeded.limit, (usd, tokens), now)

    def _budget_refusal(
        self,
        budget: BudgetConfig,
        charge: _BudgetCharge,
        totals: Totals,
        limit: str,
        estimate: tuple[float, int],
        now: float,
    ) -> Refused:
        if limit == "usd":
            used = (
                f"{format_usd(totals.spent_usd + totals.held_usd)} of its {format_usd(budget.limit_usd or 0)} limit "
                f"is spent or held by calls in flight, and this call is estimated at {format_usd(estimate[0])}"
            )
        else:
            used = (
                f"{totals.spent_tokens + totals.held_tokens:,} of its {budget.limit_tokens:,}-token limit are spent "
                f"or held by calls in flight, and this call is estimated at {estimate[1]:,} tokens"
            )
        blocked = "block" in budget.actions
        resets = self.clock.iso(charge.end)
        message = (
            f"{describe(budget)} {'is a hard cap and ' if blocked else ''}is used up: {used}; it resets at {resets}"
        )
        if "alert" in budget.actions:
            notice = Notice(
                "budget_exceeded",
                budget.name,
                f"{message}; calls are refused ({'402' if blocked else '429'}) until then",
                self._details(budget, charge, totals),
            )
            self._notify_once(f"{self.prefix}notice:{budget.name}:exceeded:{int(charge.start)}", charge, notice, now)
        if blocked:
            return Refused(ApiError(402, message, "budget_exceeded"))
        return Refused(ApiError(429, message, "budget_exceeded", headers=_retry_after(charge.end, now)))

    # ---- notices ------------------------------------------------------------------------------

    def _settled(self, admission: Admission, after: list[Totals]) -> None:
        now = time.time()
        for charge, totals in zip(admission.charges, after, strict=True):
            if isinstance(charge, _BudgetCharge):
                self._thresholds(charge, totals, now)
            elif isinstance(charge, _RunCharge) and not self.guardrails.refuses:
                for setting in self.guardrails.passed(totals, charge.loop, now):
                    message = self.guardrails.message(charge.run_id, setting, totals, now, 0.0)
                    self._run_notice(charge.run_id, setting, f"{message}; the call went through (action: alert)")

    def _thresholds(self, charge: _BudgetCharge, totals: Totals, now: float) -> None:
        for budget in charge.budgets:
            if "alert" not in budget.actions:
                continue
            percent = percent_used(budget, totals.spent_usd, totals.spent_tokens)
            for threshold in budget.thresholds:
                if percent < threshold:
                    break
                if self._alerted.get((budget.name, threshold)) == charge.start:
                    continue
                self._alerted[(budget.name, threshold)] = charge.start
                message = (
                    f"{describe(budget)} reached {threshold:g}% of its {limit_text(budget)} limit: "
                    f"{format_usd(totals.spent_usd)} and {totals.spent_tokens:,} tokens spent; "
                    f"it resets at {self.clock.iso(charge.end)}"
                )
                notice = Notice(
                    "budget_threshold",
                    budget.name,
                    message,
                    {**self._details(budget, charge, totals), "threshold": threshold},
                )
                key = f"{self.prefix}notice:{budget.name}:{threshold:g}:{int(charge.start)}"
                self._notify_once(key, charge, notice, now)

    def _details(self, budget: BudgetConfig, charge: _BudgetCharge, totals: Totals) -> dict[str, Any]:
        return {
            "budget": budget.name,
            "scope": budget.scope,
            "period": budget.period,
            "limit_usd": budget.limit_usd,
            "limit_tokens": budget.limit_tokens,
            "spent_usd": totals.spent_usd,
            "spent_tokens": totals.spent_tokens,
            "period_start": self.clock.iso(charge.start),
            "period_end": self.clock.iso(charge.end),
        }

    def _run_notice(self, run_id: str, setting: str, message: str) -> None:
        if (run_id, setting) in self._run_noticed:
            return
        if len(self._run_noticed) >= _MAX_REMEMBERED_RUN_NOTICES:
            self._run_noticed.clear()
        self._run_noticed.add((run_id, setting))
        notice = Notice("agent_guardrail", f"agent run {run_id}", message, {"agent_run_id": run_id, "setting": setting})
        key = f"{self.guardrails.run_key(run_id)}:notice:{setting}"
        self._background(self._publish_once(key, self.guardrails.ttl_s, notice))

    def _notify_once(self, key: str, charge: _BudgetCharge, notice: Notice, now: float) -> None:
        self._background(self._publish_once(key, int(charge.end - now) + GRACE_S, notice))

    async def _publish_once(self, key: str, ttl_s: int, notice: Notice) -> None:
        try:
            if await self.counters.first_time(key, ttl_s):
                self.notices.publish(notice)
        except CountersUnavailable as exc:
            self._unavailable(exc)

    def _background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unavailable(self, exc: CountersUnavailable) -> None:
        self._outage.report("budget counters unavailable, calls are admitted without budget checks: %s", exc)

    # ---- listing ------------------------------------------------------------------------------

    async def listing(self) -> list[dict[str, Any]]:
        """Every budget (config and run-time) with its current period's spend; raises `CountersUnavailable`."""
        await self._reload_if_changed()
        now = time.time()
        keys = [
            budget_key(self.prefix, budget, self.clock.bounds(budget.period, now)[0]) for budget, _ in self._sourced
        ]
        found = await self.counters.totals(keys)
        return [
            budget_row(
                budget,
                source,
                self.clock,
                now,
                totals.spent_usd if totals else 0.0,
                totals.spent_tokens if totals else 0,
            )
            for (budget, source), totals in zip(self._sourced, found, strict=True)
        ]


def _minute(now: float) -> int:
    """The start of the minute `now` is in (epoch seconds)."""
    return int(now // MINUTE_S * MINUTE_S)


def _tightest(budgets: list[BudgetConfig], limit: str) -> BudgetConfig:
    """Of budgets sharing a counter, the one with the lowest `limit` (usd or tokens): the one that was passed."""
    limited = [(budget.limit_usd if limit == "usd" else budget.limit_tokens, budget) for budget in budgets]
    return min((value, budget) for value, budget in limited if value is not None)[1]


def _retry_after(end: float, now: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(end - now)))}
