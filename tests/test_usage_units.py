"""Plan limits, the usage ledger and budgets, in-process: PlanLimits, the Interpreter's rate_limit_event and results,
the Ledger on a real SQLite file, the error shapes per door. No subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import main
from main import Ledger, PlanLimits, Settings

NOW = 1_800_000_000.0
WARNING = {"status": "allowed_warning", "resetsAt": NOW + 3600, "rateLimitType": "five_hour", "utilization": 0.91,
           "isUsingOverage": False, "surpassedThreshold": 0.9}  # as CLI 2.1.197 writes it (tests/fake_anthropic.py)
REJECTED = {"status": "rejected", "resetsAt": NOW + 600, "rateLimitType": "seven_day", "isUsingOverage": False}


# ── plan limits ──


def test_headers_mirror_anthropics_unified_names() -> None:
    limits = PlanLimits()
    assert limits.headers(NOW) == []
    limits.note(WARNING, NOW)
    limits.note({"status": "allowed", "resetsAt": NOW + 86400, "rateLimitType": "seven_day"}, NOW + 1)
    assert dict(limits.headers(NOW + 2)) == {
        "anthropic-ratelimit-unified-status": "allowed_warning",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": str(int(NOW + 3600)),
        "anthropic-ratelimit-unified-5h-utilization": "0.91",
        "anthropic-ratelimit-unified-5h-reset": str(int(NOW + 3600)),
        "anthropic-ratelimit-unified-5h-surpassed-threshold": "0.9",
        "anthropic-ratelimit-unified-7d-reset": str(int(NOW + 86400)),
    }
    assert dict(limits.headers(NOW + 3601))["anthropic-ratelimit-unified-status"] == "allowed"  # 5h window is over


def test_an_allowed_report_keeps_the_windows_utilization() -> None:
    limits = PlanLimits()
    limits.note(WARNING, NOW)
    limits.note({**WARNING, "status": "allowed", "utilization": None, "surpassedThreshold": None}, NOW + 5)
    assert limits.windows["five_hour"].utilization == 0.91
    limits.note({**WARNING, "status": "allowed", "resetsAt": NOW + 99999, "utilization": None}, NOW + 6)
    assert limits.windows["five_hour"].utilization is None  # a new window: its utilization is not known


def test_a_reached_limit_refuses_until_its_reset_then_lets_one_trial_through() -> None:
    limits = PlanLimits()
    assert limits.admit(NOW) is False
    limits.note(REJECTED, NOW)
    with pytest.raises(main.PlanLimitReached) as refused:
        limits.admit(NOW + 60)
    assert refused.value.retry_after == 540 and refused.value.status == 429
    assert refused.value.message == (f"Claude's weekly limit is reached; it resets at "
                                     f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(NOW + 600))} UTC (in 9 min)")
    assert dict(limits.headers(NOW + 60))["anthropic-ratelimit-unified-status"] == "rejected"
    assert limits.admit(NOW + 601) is True  # the trial
    with pytest.raises(main.PlanLimitReached) as waiting:
        limits.admit(NOW + 602)
    assert waiting.value.retry_after == main.TRIAL_RETRY_S
    limits.end_trial(NOW + 603)  # it learned nothing: the limit is no longer believed
    assert limits.admit(NOW + 604) is False and "seven_day" not in limits.windows


def test_a_trial_that_is_refused_again_refuses_until_the_new_reset() -> None:
    limits = PlanLimits()
    limits.note(REJECTED, NOW)
    assert limits.admit(NOW + 601) is True
    limits.note({**REJECTED, "resetsAt": NOW + 1200}, NOW + 602)
    limits.end_trial(NOW + 603)
    with pytest.raises(main.PlanLimitReached) as refused:
        limits.admit(NOW + 604)
    assert refused.value.retry_after == 596


def test_warnings_are_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    limits = PlanLimits()
    with caplog.at_level(logging.WARNING, logger="claude_proxy"):
        for moment in (NOW, NOW + 1, NOW + 2):
            limits.note(WARNING, moment)
        limits.note({**WARNING, "resetsAt": NOW + 20000}, NOW + 3)  # the next window
        limits.note({**WARNING, "status": "allowed"}, NOW + 4)
    assert [r.getMessage() for r in caplog.records] == [
        f"Claude's 5-hour session limit is close (91% used); it resets at {main.utc_minute(NOW + 3600)}",
        f"Claude's 5-hour session limit is close (91% used); it resets at {main.utc_minute(NOW + 20000)}",
    ]


def test_report_lists_each_limit() -> None:
    limits = PlanLimits()
    limits.note(WARNING, NOW)
    limits.note(REJECTED, NOW)
    assert limits.report(NOW + 700) == [
        {"limit": "five_hour", "name": "5-hour session limit", "status": "allowed_warning", "utilization": 0.91,
         "surpassed_threshold": 0.9, "resets_at": main.utc_time(NOW + 3600), "reported_at": main.utc_time(NOW)},
        {"limit": "seven_day", "name": "weekly limit", "status": "reset", "utilization": 1.0,
         "surpassed_threshold": None, "resets_at": main.utc_time(NOW + 600), "reported_at": main.utc_time(NOW)},
    ]


def test_every_window_claude_code_lists_is_noted(caplog: pytest.LogCaptureFixture) -> None:
    # CLI 2.1.331 adds unifiedWindows: every window the API's headers carried (tests/fake_anthropic.py).
    limits = PlanLimits()
    weekly = {"utilization": 0.42, "resetsAt": NOW + 86400}
    with caplog.at_level(logging.WARNING, logger="claude_proxy"):
        limits.note({**WARNING, "unifiedWindows": {"five_hour": {"utilization": 0.91, "resetsAt": NOW + 3600,
                                                                 "surpassedThreshold": 0.9}, "seven_day": weekly,
                                                   "seven_day_opus": {**weekly, "utilization": 0.8,
                                                                      "surpassedThreshold": 0.75}}}, NOW)
    assert {w.kind: (w.status, w.utilization, w.resets_at, w.threshold) for w in limits.windows.values()} == {
        "five_hour": ("allowed_warning", 0.91, NOW + 3600, 0.9), "seven_day": ("allowed", 0.42, NOW + 86400, None),
        "seven_day_opus": ("allowed_warning", 0.8, NOW + 86400, 0.75)}
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "Claude's weekly Opus limit is close (80% used)", "Claude's 5-hour session limit is close (91% used)"]
    headers = dict(limits.headers(NOW + 1))
    assert headers["anthropic-ratelimit-unified-7d-utilization"] == "0.42"
    assert headers["anthropic-ratelimit-unified-7d_opus-surpassed-threshold"] == "0.75"
    # An "allowed" report says no utilization; its window in unifiedWindows does.
    limits.note({"status": "allowed", "resetsAt": NOW + 7200, "rateLimitType": "five_hour", "isUsingOverage": False,
                 "unifiedWindows": {"five_hour": {"utilization": 0.2, "resetsAt": NOW + 7200}}}, NOW + 2)
    assert (limits.windows["five_hour"].status, limits.windows["five_hour"].utilization) == ("allowed", 0.2)
    assert limits.windows["seven_day"].utilization == 0.42  # a window left out is kept as last reported


@pytest.mark.parametrize("seconds, text", [(30, "1 min"), (540, "9 min"), (3600, "1 h"), (3660, "1 h 1 min"),
                                           (90000, "1 d 1 h")])
def test_span(seconds: float, text: str) -> None:
    assert main.span(seconds) == text


# ── the interpreter ──


def result(**fields: object) -> dict:
    return {"type": "result", "subtype": "success", "is_error": False, "total_cost_usd": 0.01, **fields}


def test_rate_limit_events_reach_the_callback() -> None:
    seen: list[dict] = []
    interpreter = main.Interpreter(on_rate_limit=seen.append)
    assert interpreter.feed({"type": "rate_limit_event", "rate_limit_info": WARNING, "session_id": "s"}) == []
    assert seen == [WARNING] and interpreter.rate_limit == WARNING


def test_a_429_after_a_rejected_event_is_the_plan_limit() -> None:
    interpreter = main.Interpreter()
    interpreter.feed({"type": "rate_limit_event", "rate_limit_info": {**REJECTED, "resetsAt": time.time() + 3600}})
    with pytest.raises(main.PlanLimitReached) as raised:
        interpreter.feed(result(is_error=True, api_error_status=429, result="You've hit your weekly limit"))
    error = raised.value
    assert error.code == "rate_limit_exceeded" and 3590 < error.retry_after <= 3600 and not error.retryable
    assert "weekly limit is reached" in error.message
    assert main.error_headers(error)["retry-after"] == "3600"


def test_a_429_without_a_rejected_event_stays_an_upstream_rate_limit() -> None:
    with pytest.raises(main.UpstreamRateLimited):
        main.Interpreter().feed(result(is_error=True, api_error_status=429, result="API Error: 429"))


def test_max_budget_ends_the_answer_like_max_turns_with_its_reason() -> None:
    interpreter = main.Interpreter()
    interpreter.feed({"type": "result", "subtype": "error_max_budget_usd", "is_error": True,
                      "total_cost_usd": 0.035, "errors": ["Reached maximum budget ($0.02)"]})
    answer = interpreter.answer
    assert (answer.finish, answer.cut_short, answer.cost) == ("length", "Reached maximum budget ($0.02)", 0.035)


def test_cost_is_this_answers_share_of_the_process_total() -> None:
    # CLI 2.1.197's total_cost_usd adds up every turn of one process: 0.0175, then 0.035 for a second equal turn.
    interpreter = main.Interpreter(billed=0.0175)
    interpreter.feed(result(total_cost_usd=0.035))
    assert interpreter.answer.cost == pytest.approx(0.0175) and interpreter.billed == 0.035


def test_the_served_model_comes_from_message_start() -> None:
    interpreter = main.Interpreter()
    interpreter.feed({"type": "stream_event", "parent_tool_use_id": None, "event": {
        "type": "message_start", "message": {"model": "claude-sonnet-5", "usage": {"input_tokens": 3}}}})
    assert interpreter.answer.model == "claude-sonnet-5"


def test_the_budget_flag() -> None:
    argv = main.build_argv("claude", Settings(max_budget_usd=0.25), main.Launch())
    assert "--max-budget-usd=0.25" in argv
    assert not any(a.startswith("--max-budget-usd") for a in main.build_argv("claude", Settings(), main.Launch()))


# ── error shapes ──


def test_plan_limit_and_budget_errors_per_door() -> None:
    plan = main.PlanLimitReached("Claude's weekly limit is reached", retry_after=120)
    budget = main.BudgetExhausted("The daily budget is spent", retry_after=3600)
    assert main.error_body(plan, "openai")["error"]["code"] == "rate_limit_exceeded"
    assert main.error_body(plan, "responses")["error"]["message"].endswith("Please try again in 120s.")
    assert main.error_body(plan, "anthropic")["error"]["type"] == "rate_limit_error"
    assert main.error_body(budget, "openai")["error"] | {"message": ""} == {
        "message": "", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
    assert main.error_body(budget, "responses")["error"]["code"] == "insufficient_quota"
    assert main.error_headers(budget) == {"x-should-retry": "false", "retry-after": "3600"}


# ── the ledger ──


def row(moment: float, **fields: object) -> dict:
    base = {"time": moment, "request_id": "chatcmpl-1", "endpoint": "/v1/chat/completions", "model": "claude-code",
            "status": 200, "input_tokens": 10, "cached_tokens": 4, "output_tokens": 5, "cost_usd": 0.01}
    return {**base, **fields}


def use(ledger: Ledger, *rows: dict) -> tuple[list[dict], list[dict]]:
    """Open the ledger, add rows, read the totals and the recent rows, close it."""
    async def go() -> tuple[list[dict], list[dict]]:
        await ledger.open()
        for r in rows:
            ledger.add(r)
        totals = await ledger.run(ledger.totals, 0.0, 4e9)
        recent = await ledger.run(ledger.recent, 10)
        await ledger.close()
        return totals, recent
    return asyncio.run(go())


def test_the_ledger_sums_by_day_and_model_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "usage.sqlite3"
    day = 1_800_000_000.0 - 1_800_000_000.0 % 86400
    totals, recent = use(Ledger(path, 90), row(day + 10), row(day + 20, status=502, error="upstream_error",
                                                              cost_usd=None), row(day + 86400, model="opus"))
    assert totals == [
        {"date": main.utc_day(day), "model": "claude-code", "requests": 2, "errors": 1, "input_tokens": 20,
         "cached_tokens": 8, "output_tokens": 10, "cost_usd": 0.01},
        {"date": main.utc_day(day + 86400), "model": "opus", "requests": 1, "errors": 0, "input_tokens": 10,
         "cached_tokens": 4, "output_tokens": 5, "cost_usd": 0.01},
    ]
    assert [r["time"] for r in recent] == [day + 86400, day + 20, day + 10]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (len(main.LEDGER_MIGRATIONS),)
    totals, _ = use(Ledger(path, 90), row(day + 86400 + 5))
    assert [t["requests"] for t in totals] == [2, 1, 1]


def test_todays_spending_is_counted_at_once_and_reloaded(tmp_path: Path) -> None:
    path, now = tmp_path / "usage.sqlite3", time.time()
    ledger = Ledger(path, 90)
    use(ledger, row(now, cost_usd=0.25), row(now - 86400 * 2, cost_usd=7.0))
    assert ledger.spent_today(now) == 0.25
    reopened = Ledger(path, 90)
    use(reopened)
    assert reopened.spent_today(now) == 0.25 and reopened.spent_today(now + 86400) == 0.0


def test_old_rows_are_removed_after_the_retention(tmp_path: Path) -> None:
    now = time.time()
    _, recent = use(Ledger(tmp_path / "usage.sqlite3", 2), row(now - 86400 * 3), row(now - 86400), row(now))
    assert len(recent) == 2


def test_a_corrupt_ledger_is_reported_and_nothing_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "usage.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    ledger = Ledger(path, 90)
    with caplog.at_level(logging.WARNING, logger="claude_proxy"):
        totals, recent = use(ledger, row(time.time(), cost_usd=0.5), row(time.time()))
    assert (totals, recent) == ([], []) and "cannot open" in (ledger.error or "")
    assert ledger.spent_today(time.time()) == 0.51  # the daily budget still counts, in memory
    assert len(caplog.records) == 1


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Files nobody may write, root included (root ignores modes: the immutable attribute, chattr +i)."""
    for path in paths:
        path.chmod(0o400)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        for path in paths:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            path.chmod(0o600)


def test_a_read_only_ledger_is_reported_and_nothing_fails(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    use(Ledger(path, 90), row(time.time()))
    with read_only(path):
        ledger = Ledger(path, 90)
        _, recent = use(ledger, row(time.time(), cost_usd=0.5))
    assert ledger.error is not None and "cannot write" in ledger.error and "readonly" in ledger.error
    assert len(recent) == 1  # what was recorded before can still be read
    assert ledger.spent_today(time.time()) == 0.51


def test_no_ledger_with_zero_retention_days(tmp_path: Path) -> None:
    app = main.create_app(Settings(state_dir=str(tmp_path), usage_retention_days=0))
    assert app.state.ledger.path is None
    totals, _ = use(app.state.ledger, row(time.time()))
    assert totals == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("since, until, days", [(None, None, 30), ("2026-11-01", "2026-11-01", 1),
                                                ("2026-10-01", "2026-11-01", 32)])
def test_usage_range(since: str | None, until: str | None, days: int) -> None:
    start, end = main.usage_range(since, until, NOW)
    assert end - start == days * 86400 and start % 86400 == 0
    if until:
        assert main.utc_day(end - 1) == until


@pytest.mark.parametrize("since, until", [("yesterday", None), ("2026-11-02", "2026-11-01"), (None, "2026-13-01")])
def test_bad_usage_ranges_are_400(since: str | None, until: str | None) -> None:
    with pytest.raises(main.InvalidRequest):
        main.usage_range(since, until, NOW)
