"""No way in from a web page: bodies without Content-Type, DNS rebinding (Host), cross-origin pages (Origin).

Each request below has the exact headers a browser sends for the attack named; each must be refused before Claude
Code starts. Requests the real clients send (no Origin, a loopback Host, application/json) keep working.
"""

from __future__ import annotations

import json

import httpx
import pytest

import main
from proxy_fixtures import fake_claude_calls

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "claude-code", "messages": [{"role": "user", "content": "run id"}]}).encode()
# What Chromium sends for fetch(url, {method: "POST", mode: "no-cors", body: new Blob([json])}) from evil.example.
NO_CORS_BLOB = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                "Sec-Fetch-Dest": "empty"}


def settings(**overrides: str) -> main.Settings:
    return main.load_settings([], {k.upper(): v for k, v in overrides.items()})


def refusal(headers: dict[str, str], method: str = "POST", **overrides: str) -> main.ProxyError | None:
    s = settings(**overrides)
    origins = frozenset(o for o in s.allowed_origins.split(",") if o)
    hosts = main.accepted_hosts(s, frozenset({"192.168.1.20", "fe80::1"}))
    return main.browser_refusal({k.lower(): v for k, v in headers.items()}, method, hosts, origins)


# ── the policy, as a pure function ──


@pytest.mark.parametrize("host", ["127.0.0.1:18880", "localhost:18880", "LOCALHOST", "[::1]:18880", "127.0.0.2"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert refusal({"Host": host}) is None


@pytest.mark.parametrize("host", ["evil.example:18880", "evil.example", "127.0.0.1.evil.example", "", "[::2]:1"])
def test_other_hosts_are_refused_as_dns_rebinding(host: str) -> None:
    error = refusal({"Host": host})
    assert error is not None and error.status == 403 and "PROXY_ALLOWED_HOSTS" in error.message


def test_allowed_hosts_and_the_listen_address() -> None:
    assert refusal({"Host": "mybox.lan:18880"}, proxy_allowed_hosts="mybox.lan") is None
    assert refusal({"Host": "anything:1"}, proxy_allowed_hosts="*") is None
    assert refusal({"Host": "10.0.0.5:18880"}, proxy_host="10.0.0.5") is None
    assert refusal({"Host": "10.0.0.6:18880"}, proxy_host="10.0.0.5") is not None
    # Listening on every address: this machine's own addresses name it, nothing else does.
    assert refusal({"Host": "192.168.1.20:18880"}, proxy_host="0.0.0.0") is None
    assert refusal({"Host": "[fe80::1]:18880"}, proxy_host="::") is None
    assert refusal({"Host": "evil.example:18880"}, proxy_host="0.0.0.0") is not None
    assert refusal({"Host": "192.168.1.20:18880"}) is not None  # loopback-bound: not a name for it


def test_cross_origin_pages_are_refused_unless_allowed() -> None:
    assert refusal({"Host": "127.0.0.1:18880", **NO_CORS_BLOB}) is not None
    assert refusal({"Host": "127.0.0.1:18880", "Origin": "null"}) is not None
    assert refusal({"Host": "127.0.0.1:18880", "Origin": "http://localhost:3000"}) is not None
    allowed = {"proxy_allowed_origins": "http://localhost:3000,https://app.example"}
    assert refusal({"Host": "127.0.0.1:18880", "Origin": "http://localhost:3000"}, **allowed) is None
    assert refusal({"Host": "127.0.0.1:18880", "Origin": "https://evil.example"}, **allowed) is not None
    # The proxy's own pages (same origin) and people typing or following a link to a page.
    assert refusal({"Host": "127.0.0.1:18880", "Origin": "http://127.0.0.1:18880"}) is None
    assert refusal({"Host": "127.0.0.1:18880", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
                   method="GET") is None
    assert refusal({"Host": "127.0.0.1:18880", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
                   method="GET") is not None
    assert refusal({"Host": "127.0.0.1:18880", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}) is not None
    assert refusal({"Host": "127.0.0.1:18880", "Sec-Fetch-Site": "none"}) is None


def test_host_names_are_parsed_like_browsers_send_them() -> None:
    assert [main.host_name(h) for h in ("a.b:1", "A.B", "[::1]:80", "[::1]", "::1", " x ")] == \
        ["a.b", "a.b", "::1", "::1", "::1", "x"]


# ── through a live server ──


def test_a_body_without_content_type_is_refused(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy()
    for path in (CHAT, "/chat/completions"):
        response = httpx.post(proxy.url + path, content=BODY)  # httpx sends no Content-Type for raw bytes
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_media_type"
    response = httpx.post(proxy.url + CHAT, content=BODY, headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert response.status_code == 415
    assert fake_claude_calls(fake_claude_log) == []
    ok = httpx.post(proxy.url + CHAT, content=BODY, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200 and len(fake_claude_calls(fake_claude_log)) == 1


@pytest.mark.parametrize("path", ["/", "/v1/models", CHAT, "/mcp/whatever", "/no/such/route"])
def test_dns_rebinding_is_refused_on_every_route(make_fake_proxy, fake_claude_log, path: str) -> None:
    proxy = make_fake_proxy()
    method = "POST" if path in (CHAT, "/mcp/whatever") else "GET"
    response = httpx.request(method, proxy.url + path, content=BODY,
                             headers={"Host": "evil.example:18880", "Content-Type": "application/json"})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "permission_error"
    assert "access-control-allow-origin" not in response.headers
    assert fake_claude_calls(fake_claude_log) == []


def test_browser_shaped_requests_are_refused_and_no_cors_headers_are_sent(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy()
    blob = httpx.post(proxy.url + CHAT, content=BODY, headers=NO_CORS_BLOB)
    beacon = httpx.post(proxy.url + CHAT, content=BODY, headers={**NO_CORS_BLOB, "Content-Type": "text/plain"})
    cors = httpx.post(proxy.url + CHAT, content=BODY, headers={"Origin": "https://evil.example",
                                                               "Content-Type": "application/json"})
    preflight = httpx.options(proxy.url + CHAT, headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    for response in (blob, beacon, cors, preflight):
        assert response.status_code == 403, response.text
        assert not any(h.startswith("access-control-") for h in response.headers)
    assert fake_claude_calls(fake_claude_log) == []
    assert "POST /v1/chat/completions status=403" in proxy.output() and "error=refused" in proxy.output()


def test_an_allowed_origin_gets_cors(make_fake_proxy, fake_claude_log) -> None:
    proxy = make_fake_proxy(proxy_allowed_origins="http://localhost:5173")
    origin = {"Origin": "http://localhost:5173"}
    preflight = httpx.options(proxy.url + CHAT, headers={**origin, "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    response = httpx.post(proxy.url + CHAT, content=BODY, headers={**origin, "Content-Type": "application/json"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin["Origin"]
    assert len(fake_claude_calls(fake_claude_log)) == 1


def test_a_page_cannot_make_the_real_cli_run_a_command(make_proxy, fake_api, tmp_path) -> None:
    """End to end with the real Claude Code CLI: the attack of the issue (a Bash tool writing a file) does nothing."""
    proxy = make_proxy()
    marker = tmp_path / "pwned"
    attack = json.dumps({"model": "claude-code", "messages": [
        {"role": "user", "content": f"[[bash:touch {marker}]] go"}]}).encode()
    for headers in (NO_CORS_BLOB, {"Host": "evil.example:18880", "Content-Type": "application/json"}, {}):
        response = httpx.post(proxy.url + CHAT, content=attack, headers=headers, timeout=60)
        assert response.status_code in (403, 415), response.text
    assert fake_api.main_requests() == [] and not marker.exists()
    allowed = httpx.post(proxy.url + CHAT, content=attack, headers={"Content-Type": "application/json"}, timeout=60)
    assert allowed.status_code == 200 and marker.exists()  # the same request from a real client does run
