"""The warm pool, end to end: pre-started Claude Code processes serve matching requests and nothing leaks."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import httpx
import psutil

from proxy_harness import wait_until


def idle(proxy) -> int:
    return httpx.get(proxy.url + "/").json()["pool"]["idle"]


def cli_pids(proxy) -> set[int]:
    pids = set()
    for process in proxy.ps.children():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "claude" in " ".join(process.cmdline()):
                pids.add(process.pid)
        except psutil.Error:
            continue
    return pids


def served_by(proxy, model: str = "claude-code") -> int:
    """The pid of the Claude Code process that ran this request (its Bash tool's parent)."""
    content = proxy.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "[[bash:echo $PPID]]"}]).choices[0].message.content
    return int(content.rsplit("Tool said: ", 1)[1])


def test_a_warm_process_serves_a_matching_request(make_proxy) -> None:
    proxy = make_proxy(claude_pool_size=1)
    assert idle(proxy) == 0
    served_by(proxy)
    assert not wait_until(lambda: idle(proxy) > 0, timeout=3), "a configuration used once gets no warm process"
    cold = served_by(proxy)
    assert wait_until(lambda: idle(proxy) == 1, timeout=20)
    [warm] = cli_pids(proxy)
    assert warm != cold
    assert served_by(proxy) == warm
    assert wait_until(lambda: idle(proxy) == 1 and cli_pids(proxy) != {warm}, timeout=20), "the pool refills"


def test_a_different_configuration_does_not_take_the_warm_process(make_proxy) -> None:
    proxy = make_proxy(claude_pool_size=1)
    served_by(proxy)
    served_by(proxy)
    assert wait_until(lambda: idle(proxy) == 1, timeout=20)
    [warm] = cli_pids(proxy)
    assert served_by(proxy, model="sonnet") != warm


def test_a_dead_warm_process_is_never_handed_out(make_proxy) -> None:
    proxy = make_proxy(claude_pool_size=1)
    served_by(proxy)
    served_by(proxy)
    assert wait_until(lambda: idle(proxy) == 1, timeout=20)
    [warm] = cli_pids(proxy)
    os.kill(warm, signal.SIGKILL)
    assert wait_until(lambda: warm not in cli_pids(proxy), timeout=5)
    assert served_by(proxy) != warm


def quiet(processes: list[psutil.Process], window: float = 1.0) -> bool:
    """Whether the processes used under 5% of a core over `window` seconds (their start-up work is done)."""
    def cpu() -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total
    before = cpu()
    time.sleep(window)
    return cpu() - before < 0.05 * window


def test_warm_processes_that_are_never_used_cost_no_api_request(make_proxy, fake_api) -> None:
    # Some CLI versions send "warm-up" requests to fill the prompt cache; a pool of them would spend the user's plan.
    proxy = make_proxy(claude_pool_size=2)
    for _ in range(2):  # the pool starts processes for a configuration once it comes back
        assert proxy.client().chat.completions.create(model="claude-code", messages=[
            {"role": "user", "content": "hi"}]).choices[0].message.content == "Hello from fake model."
    assert wait_until(lambda: idle(proxy) == 2, timeout=30)
    warm = [psutil.Process(pid) for pid in cli_pids(proxy)]
    assert len(warm) == 2
    time.sleep(3)  # CLI 2.1.331 runs its deferred start-up work about a second after it starts
    assert wait_until(lambda: quiet(warm), timeout=30)
    assert len(fake_api.requests) == 2, [r["body"].get("messages", [])[-1:] for r in fake_api.requests[2:]]
    assert {(r["method"], r["path"]) for r in fake_api.other_requests} <= {("HEAD", "/")}
    assert cli_pids(proxy) == {p.pid for p in warm}, "the warm processes were not replaced meanwhile"


def test_idle_processes_expire(make_proxy) -> None:
    proxy = make_proxy(claude_pool_size=2, claude_pool_idle_ttl=3)
    served_by(proxy)
    served_by(proxy)
    assert wait_until(lambda: idle(proxy) == 2, timeout=30)
    assert wait_until(lambda: idle(proxy) == 0 and not cli_pids(proxy), timeout=15)


def test_pool_off_keeps_no_process(make_proxy) -> None:
    proxy = make_proxy(claude_pool_size=0)
    served_by(proxy)
    assert wait_until(lambda: not proxy.ps.children(), timeout=5)
    assert idle(proxy) == 0


# ── distinct configurations (a timestamp in a system prompt): neither CLI starts nor memory ──


def test_distinct_configurations_start_no_warm_processes_and_hold_no_memory(make_fake_proxy) -> None:
    proxy = make_fake_proxy(claude_pool_size=2, proxy_max_body_bytes=64 << 20)

    def ask(i: int) -> None:
        prompt = f"It is {i:08d} o'clock. " + "s" * (1 << 20)
        body = {"model": "claude-code", "messages": [{"role": "system", "content": prompt},
                                                     {"role": "user", "content": "hi"}]}
        assert httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200

    for i in range(4):
        ask(i)
    before = proxy.ps.memory_info().rss
    for i in range(4, 44):
        ask(i)
    assert wait_until(lambda: not proxy.children(), timeout=5), "no process is started for a configuration used once"
    assert idle(proxy) == 0
    grown = proxy.ps.memory_info().rss - before
    assert grown < 16 << 20, f"the proxy grew by {grown >> 20} MiB after 40 distinct 1 MiB system prompts"


def test_the_pool_remembers_few_configurations() -> None:
    import asyncio
    import tracemalloc

    import main

    started: list[main.Launch] = []

    async def spawn(launch: main.Launch) -> main.ClaudeProcess:
        started.append(launch)
        raise main.ClaudeFailed("not in this test")

    async def scenario() -> None:
        pool = main.WarmPool(2, 600, spawn, None, main.Background())  # type: ignore[arg-type]
        tracemalloc.start()
        for i in range(40):
            pool.learn(main.Launch(system_prompt=f"{i:08d}" + "s" * (1 << 20)))
            pool.refill()
            await asyncio.sleep(0)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert held < 1 << 20 and started == []
        again = main.Launch(system_prompt="the same every time")
        pool.learn(again)
        pool.learn(again)
        pool.refill()
        await asyncio.sleep(0.01)
        assert started == [again], "a configuration used twice is pre-started for"

    asyncio.run(scenario())
