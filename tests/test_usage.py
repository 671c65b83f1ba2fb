"""Plan limits, the usage ledger, budgets, /v1/usage, /metrics and the status page's sign-in, through a live proxy:
with tests/fake_claude.py as the CLI, and end to end with the real Claude Code CLI against the fake Anthropic API
(which sends the plan-limit headers Claude Code reads when logged in with a subscription)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_anthropic import lists_unified_windows, run_cli, unified_headers
from proxy_fixtures import fake_claude_calls
from proxy_harness import wait_until
from test_usage_units import read_only

CHAT = "/v1/chat/completions"
UNIFIED = "anthropic-ratelimit-unified"
SUBSCRIPTION = {"anthropic_api_key": None, "claude_code_oauth_token": "test-oauth-token"}  # for make_proxy
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat(proxy, content: str = "hi", **fields) -> httpx.Response:
    body = {"model": "claude-code", "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(proxy.url + CHAT, json=body, headers=auth(proxy), timeout=60)


def auth(proxy) -> dict[str, str]:
    token = proxy.env.get("CLAUDE_PROXY_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def usage(proxy, **params: str) -> dict:
    response = httpx.get(proxy.url + "/v1/usage", params=params, headers=auth(proxy))
    assert response.status_code == 200, response.text
    return response.json()


def ledger_rows(state_dir: Path, count: int) -> list[dict]:
    """The ledger's rows, oldest first, once there are `count` of them (the proxy writes them on a thread)."""
    path = state_dir / "usage.sqlite3"

    def rows() -> list[dict]:
        if not path.exists():
            return []
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY time")]

    assert wait_until(lambda: len(rows()) >= count), rows()
    return rows()


def cli_cost(claude_bin: str, cli_env: dict[str, str], folder: Path, prompt: str) -> float:
    """What the CLI itself reports an answer costs, run on its own (each CLI version prices the model it defaults to
    its own way: [[usage:1000,500,0,0]] is $0.0175 on 2.1.197, $0.014 on 2.1.331)."""
    folder.mkdir(exist_ok=True)
    return run_cli(claude_bin, cli_env, prompt, cwd=folder).result()["total_cost_usd"]


def metric_samples(proxy) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, parsed with prometheus_client's parser, by (name, sorted labels)."""
    response = httpx.get(proxy.url + "/metrics", headers=auth(proxy))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


# ── with the fake CLI ──


def test_usage_metrics_and_status_need_the_token(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_proxy_token="s3cret-token")
    for path in ("/v1/usage", "/metrics"):
        assert httpx.get(proxy.url + path).status_code == 401
        assert httpx.get(proxy.url + path, headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    page = httpx.get(proxy.url + "/status")
    assert page.status_code == 401 and '<form class="login" method="post" action="/status/login">' in page.text
    assert "Last 50 requests" not in page.text
    bearer = httpx.get(proxy.url + "/status", headers={"authorization": "Bearer s3cret-token"})
    assert bearer.status_code == 200 and "Last 50 requests" in bearer.text


def test_the_status_page_signs_in_with_a_form_and_an_http_only_cookie(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_proxy_token="s3cret-token")
    with httpx.Client(base_url=proxy.url) as browser:
        wrong = browser.post("/status/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        signed_in = browser.post("/status/login", data={"token": "s3cret-token"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/status"
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/status" in cookie
        assert "s3cret-token" not in cookie
        page = browser.get("/status")
        assert page.status_code == 200 and "Last 50 requests" in page.text and "Sign out" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert browser.post("/status/logout").status_code == 303
        assert browser.get("/status").status_code == 401
    refused = httpx.post(proxy.url + "/status/login", data={"token": "s3cret-token"},
                         headers={"origin": "https://evil.example"})
    assert refused.status_code == 403 and "set-cookie" not in refused.headers  # the browser guard covers it too
    assert "s3cret-token" not in proxy.output()


def test_health_says_whether_claude_code_is_logged_in(make_fake_proxy) -> None:
    login = httpx.get(make_fake_proxy().url + "/").json()["claude"]["login"]
    assert login == {"logged_in": True, "method": "api_key", "provider": "firstParty", "subscription": None,
                     "error": None}
    logged_out = httpx.get(make_fake_proxy(fake_claude_login="0").url + "/").json()["claude"]["login"]
    assert logged_out["logged_in"] is False and logged_out["method"] == "none"


def test_a_daily_budget_refuses_without_starting_claude_code(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(claude_daily_budget_usd="0.002")  # the fake CLI reports 0.001 per run
    assert chat(proxy).status_code == 200 and chat(proxy).status_code == 200
    refused = chat(proxy)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.json()["error"]["type"] == "insufficient_quota"
    until_midnight = 86400 - time.time() % 86400
    assert abs(int(refused.headers["retry-after"]) - until_midnight) < 5
    assert "CLAUDE_DAILY_BUDGET_USD" in refused.json()["error"]["message"]
    responses = httpx.post(proxy.url + "/v1/responses", json={"model": "claude-code", "input": "hi"})
    assert responses.status_code == 429 and responses.json()["error"]["code"] == "insufficient_quota"
    assert len(fake_claude_calls(fake_claude_log)) == 2
    assert usage(proxy)["today"]["cost_usd"] == pytest.approx(0.002)


def test_a_corrupt_ledger_does_not_stop_the_proxy(make_fake_proxy, tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "usage.sqlite3").write_bytes(b"garbage " * 1000)
    proxy = make_fake_proxy()
    assert chat(proxy).status_code == 200
    report = usage(proxy)
    assert report["days"] == [] and "cannot open" in report["ledger"]["error"]
    assert "Usage ledger: cannot open" in httpx.get(proxy.url + "/status").text
    assert proxy.output().count("usage ledger") == 1


def test_a_read_only_ledger_does_not_stop_the_proxy(make_fake_proxy, tmp_path) -> None:
    first = make_fake_proxy()
    assert chat(first).status_code == 200
    ledger_rows(tmp_path / "state", 1)
    first.stop()
    with read_only(tmp_path / "state" / "usage.sqlite3"):
        proxy = make_fake_proxy()
        assert chat(proxy).status_code == 200
        report = usage(proxy)
        assert report["totals"]["requests"] == 1 and "readonly" in report["ledger"]["error"]
        assert proxy.output().count("usage ledger") == 1


def test_a_client_that_leaves_is_recorded(make_fake_proxy, tmp_path) -> None:
    proxy = make_fake_proxy(fake_claude_mode="hang", claude_prime_window="0.2")
    with httpx.stream("POST", proxy.url + CHAT, json={"model": "claude-code", "stream": True,
                                                      "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + CHAT, json={"model": "claude-code", "messages": [{"role": "user", "content": "hi"}]},
                   timeout=1)
    streamed, collected = ledger_rows(tmp_path / "state", 2)
    assert (streamed["status"], streamed["error"], streamed["stream"]) == (200, "client_closed", 1)
    assert (collected["status"], collected["error"], collected["stream"]) == (499, "client_closed", 0)


# ── end to end: plan limits ──


def test_plan_limits_are_passed_on_in_every_door_and_logged_once(make_proxy, fake_api, claude_version) -> None:
    reset, weekly = int(time.time()) + 3600, int(time.time()) + 3 * 86400
    fake_api.rate_limit = unified_headers("allowed", reset=reset, windows={
        "5h": {"utilization": 0.91, "reset": reset, "surpassed-threshold": 0.9},
        "7d": {"utilization": 0.42, "reset": weekly}})
    every_window = lists_unified_windows(claude_version)  # CLI 2.1.331 reports the weekly window too, 2.1.197 not
    proxy = make_proxy(**SUBSCRIPTION)
    first = chat(proxy)
    assert first.status_code == 200
    expected = {f"{UNIFIED}-status": "allowed_warning", f"{UNIFIED}-representative-claim": "five_hour",
                f"{UNIFIED}-reset": str(reset), f"{UNIFIED}-5h-utilization": "0.91",
                f"{UNIFIED}-5h-reset": str(reset), f"{UNIFIED}-5h-surpassed-threshold": "0.9"}
    if every_window:
        expected |= {f"{UNIFIED}-7d-utilization": "0.42", f"{UNIFIED}-7d-reset": str(weekly)}
    assert {k: v for k, v in first.headers.items() if k.startswith(UNIFIED)} == expected
    with httpx.stream("POST", proxy.url + CHAT, json={"model": "claude-code", "stream": True,
                                                      "messages": [{"role": "user", "content": "hi"}]}) as streamed:
        assert streamed.headers[f"{UNIFIED}-5h-utilization"] == "0.91"
        streamed.read()
    responses = httpx.post(proxy.url + "/v1/responses", json={"model": "claude-code", "input": "hi"}, timeout=60)
    assert responses.status_code == 200 and responses.headers[f"{UNIFIED}-status"] == "allowed_warning"
    assert httpx.get(proxy.url + "/v1/models").headers[f"{UNIFIED}-status"] == "allowed_warning"
    assert proxy.output().count("Claude's 5-hour session limit is close (91% used)") == 1
    plan = [(limit["limit"], limit["status"], limit["utilization"]) for limit in usage(proxy)["plan"]]
    assert plan == [("five_hour", "allowed_warning", 0.91), *([("seven_day", "allowed", 0.42)] if every_window else [])]


def test_a_reached_plan_limit_refuses_at_once_until_it_resets(make_proxy, fake_api) -> None:
    reset = int(time.time()) + 8
    fake_api.rate_limit = unified_headers("rejected", claim="five_hour", reset=reset)
    proxy = make_proxy(**SUBSCRIPTION)
    stream = {"model": "claude-code", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    first = httpx.post(proxy.url + CHAT, json=stream, timeout=60)  # a refusal is an HTTP status, even streamed
    assert first.status_code == 429, first.text
    error = first.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "5-hour session limit is reached; it resets at" in error["message"]
    assert 1 <= int(first.headers["retry-after"]) <= 8 and first.headers["x-should-retry"] == "false"
    assert first.headers[f"{UNIFIED}-status"] == "rejected"
    started = len(fake_api.other_requests)  # every Claude Code process sends HEAD / when it starts
    again = chat(proxy)
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded"
    codex = httpx.post(proxy.url + "/v1/responses", json={"model": "claude-code", "input": "hi"})
    assert codex.status_code == 429 and "Please try again in" in codex.json()["error"]["message"]
    assert len(fake_api.requests) == 1 and len(fake_api.other_requests) == started
    assert "5-hour session limit is reached" in proxy.output()

    fake_api.rate_limit = unified_headers("allowed", reset=reset + 18000)
    time.sleep(max(0.0, reset - time.time()) + 0.5)
    trial: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: trial.append(chat(proxy, "[[slow:3]] hi")))
    thread.start()
    assert wait_until(lambda: len(fake_api.requests) == 2, timeout=30)
    waiting = chat(proxy)  # while the one trial request finds out
    assert waiting.status_code == 429 and waiting.headers["retry-after"] == "5"
    thread.join()
    assert trial[0].status_code == 200
    assert chat(proxy).status_code == 200


# ── end to end: budgets ──


def test_a_request_budget_ends_the_answer_and_conversations_still_continue(make_proxy, fake_api, claude_bin, cli_env,
                                                                           tmp_path) -> None:
    price, large = (cli_cost(claude_bin, cli_env, tmp_path / "alone", f"[[usage:1000,{n},0,0]] alone")
                    for n in (500, 1000))
    assert price < 0.02 < min(2 * price, large)  # one answer fits the budget; two, or the large one, do not
    state = tmp_path / "state"
    proxy = make_proxy(claude_max_budget_usd="0.02", claude_sessions="1", claude_state_dir=state)
    client = proxy.client()
    history = [{"role": "user", "content": "[[usage:1000,500,0,0]] one"}]
    first = client.chat.completions.create(model="claude-code", messages=history)  # costs `price`
    assert first.choices[0].finish_reason == "stop"
    sessions = state / "sessions.json"
    assert wait_until(lambda: sessions.exists() and "session_id" in sessions.read_text(), timeout=10)  # released
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "[[usage:1000,500,0,0]] two"}]
    second = client.chat.completions.create(model="claude-code", messages=history)
    # `price` again (the budget counts a resumed session's new turns only), though CLI 2.1.331's total_cost_usd for it
    # is the session's 2 * price: each answer is billed its own share.
    assert second.choices[0].finish_reason == "stop"
    over = client.chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "[[usage:1000,1000,0,0]] three"}])  # costs `large`
    assert over.choices[0].finish_reason == "length"
    rows = ledger_rows(state, 3)
    assert [r["route"] for r in rows] == ["new", "resumed", "new"]
    assert [r["finish"] for r in rows] == ["stop", "stop", "length"]
    assert rows[2]["reason"] == "Reached maximum budget ($0.02)" and rows[2]["error"] is None
    assert [r["cost_usd"] for r in rows] == pytest.approx([price, price, large])
    assert rows[0]["conversation"] == rows[1]["conversation"] != rows[2]["conversation"]


def test_a_daily_budget_refuses_once_spent(make_proxy, fake_api, claude_bin, cli_env, tmp_path) -> None:
    price = cli_cost(claude_bin, cli_env, tmp_path / "alone", "[[usage:1000,500,0,0]] hi")
    proxy = make_proxy(claude_daily_budget_usd=str(1.5 * price))  # spent after two answers, not after one
    asked = len(fake_api.main_requests())
    for _ in range(2):
        assert chat(proxy, "[[usage:1000,500,0,0]] hi").status_code == 200
    refused = chat(proxy, "[[usage:1000,500,0,0]] hi")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert len(fake_api.main_requests()) == asked + 2
    assert usage(proxy)["today"]["cost_usd"] == pytest.approx(2 * price)


# ── end to end: the ledger, /v1/usage, /metrics ──


def test_every_kind_of_request_gets_its_ledger_row(make_proxy, fake_api, tmp_path) -> None:
    state = tmp_path / "state"
    proxy = make_proxy(claude_state_dir=state, claude_prime_window="0.5")
    client = proxy.client()
    client.chat.completions.create(model="claude-code", messages=[{"role": "user", "content": "[[usage:20,5,7,0]]"}])
    list(client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chat(proxy, "[[error:500]] hi").status_code == 502
    with httpx.stream("POST", proxy.url + CHAT, json={"model": "claude-code", "stream": True, "messages": [
            {"role": "user", "content": "[[slow:30]] hi"}]}, timeout=60) as response:
        next(response.iter_raw())  # the role chunk; then the client leaves
    asked = [{"role": "user", "content": '[[tool:get_weather:{"city": "Paris"}]]'}]
    call = client.chat.completions.create(model="claude-code", messages=asked, tools=[WEATHER])
    assert call.choices[0].finish_reason == "tool_calls"
    [tool_call] = call.choices[0].message.tool_calls
    client.chat.completions.create(model="claude-code", tools=[WEATHER], messages=[
        *asked, call.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny"}])
    assert httpx.post(proxy.url + CHAT, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
                      ).status_code == 404
    rows = ledger_rows(state, 7)
    plain, streamed, failed, left, called, answered, unknown = rows
    assert (plain["endpoint"], plain["model"], plain["status"], plain["stream"]) == (CHAT, "claude-code", 200, 0)
    assert plain["served_model"].startswith("claude-") and "sonnet" in streamed["served_model"]
    assert (plain["input_tokens"], plain["cached_tokens"], plain["output_tokens"]) == (27, 7, 5)
    assert plain["cost_usd"] > 0 and 0 < plain["ttft"] <= plain["duration"] and plain["finish"] == "stop"
    assert plain["request_id"].startswith("chatcmpl-") and plain["route"] == "new" and plain["error"] is None
    assert (streamed["model"], streamed["stream"], streamed["status"], streamed["output_tokens"]) == (
        "sonnet", 1, 200, 5)
    assert (failed["status"], failed["error"], failed["ttft"], failed["finish"]) == (502, "upstream_error", None, None)
    assert "500" in failed["reason"]
    assert (left["status"], left["error"], left["stream"]) == (200, "client_closed", 1)
    assert (called["finish"], called["route"], answered["route"], answered["finish"]) == (
        "tool_calls", "new", "parked", "stop")
    assert called["conversation"] == answered["conversation"]
    assert (unknown["status"], unknown["error"], unknown["model"]) == (404, "model_not_found", "gpt-4o")

    report = usage(proxy)
    assert report["since"] < report["until"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert {day["model"]: day["requests"] for day in report["days"]} == {"claude-code": 5, "sonnet": 1, "gpt-4o": 1}
    for name in ("input_tokens", "cached_tokens", "output_tokens", "cost_usd"):
        assert report["totals"][name] == pytest.approx(sum(r[name] or 0 for r in rows))
    assert report["totals"]["requests"] == 7 and report["totals"]["errors"] == 3
    assert usage(proxy, since="2000-01-01", until="2000-01-02")["days"] == []


def test_metrics_count_each_request_exactly_once(make_proxy, fake_api) -> None:
    proxy = make_proxy(claude_pool_size="1")
    chat(proxy)
    before = metric_samples(proxy)
    answer = chat(proxy, "[[usage:30,9,10,0]] hi").json()
    after = metric_samples(proxy)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("claude_proxy_requests_total", endpoint=CHAT, model="claude-code", status="200") == 1
    assert moved("claude_proxy_tokens_total", model="claude-code", kind="input") == 40
    assert moved("claude_proxy_tokens_total", model="claude-code", kind="cached") == 10
    assert moved("claude_proxy_tokens_total", model="claude-code", kind="output") == 9
    assert moved("claude_proxy_cost_usd_total", model="claude-code") == pytest.approx(
        answer["usage"]["total_cost_usd"])
    assert moved("claude_proxy_request_duration_seconds_count", endpoint=CHAT) == 1
    assert moved("claude_proxy_time_to_first_token_seconds_count", endpoint=CHAT) == 1
    assert sum(v for (name, _), v in after.items() if name == "claude_proxy_requests_total") == 2
    assert wait_until(lambda: metric_samples(proxy)[("claude_proxy_runs", (("state", "running"),))] == 0)
    assert wait_until(lambda: metric_samples(proxy)[("claude_proxy_processes", (("kind", "warm"),))] == 1)
    assert metric_samples(proxy)[("claude_proxy_spent_today_usd", ())] > 0


def test_the_ledger_and_totals_survive_a_restart(make_proxy, fake_api, tmp_path) -> None:
    state = tmp_path / "state"
    first = make_proxy(claude_state_dir=state)
    for _ in range(2):
        assert chat(first, "[[usage:1000,500,0,0]] hi").status_code == 200
    before = usage(first)
    first.stop()
    spent = before["today"]["cost_usd"]
    assert spent > 0 and before["totals"]["cost_usd"] == pytest.approx(spent)
    second = make_proxy(claude_state_dir=state, claude_daily_budget_usd=str(1.25 * spent))  # room for one answer more
    assert usage(second)["totals"] == before["totals"] and before["totals"]["requests"] == 2
    assert usage(second)["today"]["cost_usd"] == pytest.approx(spent)
    assert chat(second, "[[usage:1000,500,0,0]] hi").status_code == 200  # 2 answers' cost: within the budget
    assert chat(second, "hi").status_code == 429  # 3 answers' cost: today's spending was reloaded from the ledger
    assert usage(second)["totals"]["requests"] == 4
    assert json.dumps(usage(second)["days"]).count('"claude-code"') == 1


def test_health_reports_the_login_without_an_api_call(make_proxy, fake_api) -> None:
    login = httpx.get(make_proxy().url + "/").json()["claude"]["login"]
    assert login["logged_in"] is True and login["method"] == "api_key"
    subscription = httpx.get(make_proxy(**SUBSCRIPTION).url + "/").json()["claude"]["login"]
    assert subscription["logged_in"] is True and subscription["method"] == "oauth_token"
    assert fake_api.requests == []
