"""The status page in a real browser: headless Chromium (Debian's `chromium` package) loads /status after a few
requests through the real Claude Code CLI; the rendered DOM is checked, and a screenshot taken for the README
(`STATUS_PAGE_SCREENSHOT=tests/status-page.png ./tests/run.sh tests/test_status_page.py` writes it there).

Without Chromium the test skips on a developer's machine, saying how to install it; in CI (CI=true), where .ci/run
installs it, it fails instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from fake_anthropic import unified_headers
from proxy_harness import wait_until

SUBSCRIPTION = {"anthropic_api_key": None, "claude_code_oauth_token": "test-oauth-token"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is missing in CI: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("Chromium is missing: install it to run the status page test "
                "(Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask chromium)")


def browse(browser: str, url: str, profile: Path, *flags: str) -> str:
    result = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class Texts(HTMLParser):
    """The text of every element with an id, and every element's text in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.open: list[str | None] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("meta", "input", "br", "link"):
            element_id = dict(attrs).get("id")
            self.open.append(element_id)
            if element_id:
                self.by_id[element_id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("meta", "input", "br", "link") and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for element_id in self.open:
            if element_id:
                self.by_id[element_id] += data


def chat(proxy, content: str, **fields) -> httpx.Response:
    body = {"model": "claude-code", "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)


def test_the_status_page_in_chromium(make_proxy, fake_api, claude_version, tmp_path) -> None:
    browser = chromium()
    weekly = int(time.time()) + 3 * 86400 + 3600
    fake_api.rate_limit = unified_headers("allowed", claim="seven_day", reset=weekly, windows={
        "7d": {"utilization": 0.78, "reset": weekly, "surpassed-threshold": 0.75}})
    proxy = make_proxy(claude_pool_size="1", **SUBSCRIPTION)
    ids = [chat(proxy, "[[usage:1200,80,3000,0]] hi").json()["id"]]
    session = int(time.time()) + 2 * 3600 + 600
    fake_api.rate_limit = unified_headers("allowed", reset=session, windows={
        "5h": {"utilization": 0.91, "reset": session, "surpassed-threshold": 0.9}})
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json={
            "model": "sonnet", "stream": True, "messages": [{"role": "user", "content": "[[usage:800,40,0,0]]"}]},
            timeout=60) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: {")]
    ids.append(json.loads(lines[0][len("data: "):])["id"])
    responses = httpx.post(proxy.url + "/v1/responses", json={"model": "claude-code", "input": "hi"}, timeout=60)
    ids.append(responses.json()["id"])
    assert chat(proxy, "[[error:500]] hi").status_code == 502
    assert wait_until(lambda: httpx.get(proxy.url + "/").json()["pool"]["idle"] == 1, timeout=30)

    dom = browse(browser, proxy.url + "/status", tmp_path / "profile", "--dump-dom")
    page = Texts()
    page.feed(dom)
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(Claude Code\)", claude_version)
    assert page.by_id["cli-version"] == claude_version
    assert page.by_id["logged-in"].startswith("yes (oauth_token")
    assert page.by_id["warm"] == "1" and page.by_id["running"] == "0" and page.by_id["parked"] == "0"
    assert page.by_id["today-requests"] == "4" and page.by_id["today-errors"] == "1"
    assert page.by_id["today-input"] == "5,012" and page.by_id["today-cached"] == "3,000"
    assert "close to the limit · 91% used" in page.by_id["limit-five_hour"]
    assert "close to the limit · 78% used" in page.by_id["limit-seven_day"]
    assert all(f'<tr data-id="{request_id}"' in dom for request_id in ids), ids
    rows = "".join(page.text)
    assert "502 upstream_error" in rows and "sonnet → claude-sonnet" in rows and "responses" in rows

    screenshot = tmp_path / "status-page.png"
    browse(browser, proxy.url + "/status", tmp_path / "profile", f"--screenshot={screenshot}",
           "--window-size=1280,1000")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := os.environ.get("STATUS_PAGE_SCREENSHOT"):
        shutil.copyfile(screenshot, keep)
    phone = tmp_path / "status-page-phone.png"
    browse(browser, proxy.url + "/status", tmp_path / "profile", f"--screenshot={phone}", "--window-size=390,1600")
    if keep:
        shutil.copyfile(phone, Path(keep).with_name("status-page-phone.png"))


def test_without_chromium_ci_fails_and_a_developer_is_told_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install chromium"):
        chromium()
