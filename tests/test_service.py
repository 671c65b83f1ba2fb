"""install_service.sh and uninstall_service.sh, run for real against a sandbox.

Each test copies the two scripts and the plist template into a temporary checkout (with a stub run.sh),
points HOME at a temporary folder, and puts a stub folder first on PATH: `uname` prints the system the
test asks for; `launchctl`, `systemctl`, `loginctl`, `plutil` (and `curl` where a test adds it) append
their argv to a log and exit 0, or 1 for the calls listed in STUB_FAIL. A fake `claude` sits in its own
folder on PATH. The environment is built from scratch, so nothing from the developer's shell leaks in.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LABEL = "com.claude-code.openai-proxy"
UNIT = "claude-code-openai-proxy.service"
COPIED = ("install_service.sh", "uninstall_service.sh", f"{LABEL}.plist")
UID = os.getuid()
TOKEN = "tok-<&>\"'$`\\-secret"  # every character the XML, unit and env-file quoting must survive

# Records "name<TAB>arg<TAB>arg..." per call. STUB_FAIL="launchctl:bootstrap systemctl:daemon-reload"
# makes a call fail when its first or second argument matches.
RECORDING_STUB = """#!/bin/sh
n=$(basename "$0")
{ printf '%s' "$n"; for a in "$@"; do printf '\\t%s' "$a"; done; printf '\\n'; } >>"$STUB_LOG"
case " ${STUB_FAIL:-} " in
*" $n:${1:-} "* | *" $n:${2:-} "*) echo "$n: stub failure" >&2; exit 1 ;;
esac
if [ "$n" = curl ]; then printf '%s' "${STUB_CURL_CODE:-000}"; fi
exit 0
"""
UNAME_STUB = '#!/bin/sh\nprintf "%s\\n" "$STUB_UNAME"\n'


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Sandbox:
    home: Path
    checkout: Path
    stub_dir: Path
    claude_dir: Path
    stub_log: Path

    @property
    def plist_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def unit_path(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / UNIT

    @property
    def env_file(self) -> Path:
        return self.home / ".config" / "claude-code-openai-proxy" / "env"

    def add_stub(self, name: str) -> None:
        write_executable(self.stub_dir / name, RECORDING_STUB)

    def env(self, system: str, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": "tester",
            "PATH": f"{self.stub_dir}:{self.claude_dir}:/usr/bin:/bin",
            "STUB_LOG": str(self.stub_log),
            "STUB_UNAME": system,
            "PROXY_INSTALL_WAIT": "0",
        }
        env.update(extra)
        return env

    def run(self, script: str, *args: str, system: str = "Darwin", **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.checkout / script), *args],
            env=self.env(system, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def install(self, *args: str, system: str = "Darwin", **extra: str) -> subprocess.CompletedProcess[str]:
        result = self.run("install_service.sh", *args, system=system, **extra)
        assert result.returncode == 0, result.stderr
        return result

    def calls(self) -> list[list[str]]:
        if not self.stub_log.exists():
            return []
        return [line.split("\t") for line in self.stub_log.read_text().splitlines()]

    def reset_calls(self) -> None:
        self.stub_log.unlink(missing_ok=True)

    def files_under_home(self) -> list[Path]:
        return sorted(p for p in self.home.rglob("*") if not p.is_dir())


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    home = tmp_path / "home"
    home.mkdir()
    checkout = tmp_path / "check out & 100%"  # a space, an XML special and a systemd specifier character
    checkout.mkdir()
    for name in COPIED:
        shutil.copy2(REPO / name, checkout / name)
    write_executable(checkout / "run.sh", "#!/bin/sh\nexit 0\n")
    stub_dir = tmp_path / "stubs"
    stub_dir.mkdir()
    for name in ("launchctl", "systemctl", "loginctl", "plutil"):
        write_executable(stub_dir / name, RECORDING_STUB)
    write_executable(stub_dir / "uname", UNAME_STUB)
    claude_dir = tmp_path / "claude bin"
    claude_dir.mkdir()
    write_executable(claude_dir / "claude", "#!/bin/sh\necho 'fake claude'\n")
    return Sandbox(home, checkout, stub_dir, claude_dir, tmp_path / "stub.log")


def load_plist(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        parsed: dict[str, Any] = plistlib.load(f)
    return parsed


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values. Unit files may repeat a key (Environment=), so configparser won't do."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep == "=" and key.strip() == key and key, f"not a unit file line: {raw!r}"
        current.setdefault(key, []).append(value)
    return sections


def unit_value(text: str) -> str:
    """Undo the installer's quoting of ExecStart=/Environment= words and of % specifiers."""
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\").replace("$$", "$")
    return text.replace("%%", "%")


def source_env_file(path: Path, *names: str) -> list[str]:
    """The values as a shell sees them; systemd's EnvironmentFile= parses the same double-quote escapes."""
    script = 'set -a; . "$1"; shift; for n in "$@"; do eval "printf \'%s\\0\' \\"\\${$n}\\""; done'
    out = subprocess.run(["sh", "-c", script, "sh", str(path), *names], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


LAUNCHCTL_INSTALL = [
    ["launchctl", "bootout", f"gui/{UID}/{LABEL}"],
    ["launchctl", "enable", f"gui/{UID}/{LABEL}"],
]
SYSTEMCTL_INSTALL = [
    ["systemctl", "--user", "daemon-reload"],
    ["systemctl", "--user", "try-restart", UNIT],
    ["systemctl", "--user", "enable", "--now", UNIT],
    ["loginctl", "show-user", "tester", "--property=Linger", "--value"],
]


# ── the template ─────────────────────────────────────────────────────────────


def test_template_is_a_parseable_plist_with_placeholders() -> None:
    template = load_plist(REPO / f"{LABEL}.plist")
    assert template["Label"] == LABEL
    assert template["ProgramArguments"] == ["__REPO_DIR__/run.sh"]
    assert template["WorkingDirectory"] == "__REPO_DIR__"
    assert template["StandardOutPath"] == "__REPO_DIR__/logs/stdout.log"
    assert template["StandardErrorPath"] == "__REPO_DIR__/logs/stderr.log"
    assert template["RunAtLoad"] is True
    assert template["KeepAlive"] is True
    assert template["EnvironmentVariables"] == {"PATH": "__PATH__", "PYTHONUNBUFFERED": "1"}


# ── macOS ────────────────────────────────────────────────────────────────────


def test_macos_install_renders_absolute_paths_and_settings(sandbox: Sandbox) -> None:
    result = sandbox.install(
        PATH=f"{sandbox.stub_dir}:{sandbox.claude_dir}:relative/bin:/usr/bin:/bin",
        CLAUDE_PROXY_TOKEN=TOKEN,
        PROXY_PORT="18999",
        MODEL_NAME="claude <sonnet> & 'co'",
        CLAUDE_MAX_CONCURRENCY="3",
        CLAUDE_CODE_ENTRYPOINT="cli",  # a surrounding Claude Code session's variable, not a setting
        UNRELATED="x",
    )
    plist = load_plist(sandbox.plist_path)
    run_sh = sandbox.checkout / "run.sh"
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [str(run_sh)]
    assert plist["WorkingDirectory"] == str(sandbox.checkout)
    assert plist["StandardOutPath"] == str(sandbox.checkout / "logs" / "stdout.log")
    assert plist["StandardErrorPath"] == str(sandbox.checkout / "logs" / "stderr.log")
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True

    env = plist["EnvironmentVariables"]
    assert set(env) == {
        "PATH",
        "PYTHONUNBUFFERED",  # from the template: log lines reach the files as they happen
        "CLAUDE_PROXY_TOKEN",
        "PROXY_PORT",
        "MODEL_NAME",
        "CLAUDE_MAX_CONCURRENCY",
    }
    assert env["CLAUDE_PROXY_TOKEN"] == TOKEN
    assert env["PROXY_PORT"] == "18999"
    assert env["MODEL_NAME"] == "claude <sonnet> & 'co'"
    path_dirs = env["PATH"].split(":")
    assert path_dirs[0] == str(sandbox.claude_dir)
    assert "relative/bin" not in path_dirs
    assert {"/usr/bin", "/bin"} <= set(path_dirs)
    assert all(d.startswith("/") for d in path_dirs)

    assert mode_of(sandbox.plist_path) == 0o600
    assert (sandbox.checkout / "logs").is_dir()
    assert sandbox.calls() == [
        ["plutil", "-lint", str(sandbox.plist_path)],
        *LAUNCHCTL_INSTALL,
        ["launchctl", "bootstrap", f"gui/{UID}", str(sandbox.plist_path)],
    ]
    assert TOKEN not in result.stdout + result.stderr
    assert f"launchctl print gui/{UID}/{LABEL}" in result.stdout
    assert "stdout.log" in result.stdout


def test_macos_plist_is_private_even_without_a_token(sandbox: Sandbox) -> None:
    result = sandbox.install()
    assert mode_of(sandbox.plist_path) == 0o600
    assert set(load_plist(sandbox.plist_path)["EnvironmentVariables"]) == {"PATH", "PYTHONUNBUFFERED"}
    assert "claude setup-token" in result.stdout  # the launchd Keychain pitfall, shown when no token is set


def test_macos_second_install_reloads_one_job(sandbox: Sandbox) -> None:
    sandbox.install(CLAUDE_PROXY_TOKEN=TOKEN)
    first = sandbox.plist_path.read_bytes()
    second = sandbox.install(CLAUDE_PROXY_TOKEN=TOKEN)
    assert sandbox.plist_path.read_bytes() == first
    assert sorted(p.name for p in sandbox.plist_path.parent.iterdir()) == [f"{LABEL}.plist"]
    load = ["launchctl", "bootstrap", f"gui/{UID}", str(sandbox.plist_path)]
    lint = ["plutil", "-lint", str(sandbox.plist_path)]
    assert sandbox.calls() == [lint, *LAUNCHCTL_INSTALL, load] * 2
    assert "dropped" not in second.stderr


def test_macos_reinstall_without_the_token_warns_that_it_is_dropped(sandbox: Sandbox) -> None:
    sandbox.install(CLAUDE_PROXY_TOKEN=TOKEN, PROXY_PORT="18999")
    result = sandbox.install(PROXY_PORT="18999")
    assert "CLAUDE_PROXY_TOKEN" in result.stderr and "dropped" in result.stderr
    assert "PROXY_PORT" not in result.stderr
    assert "CLAUDE_PROXY_TOKEN" not in load_plist(sandbox.plist_path)["EnvironmentVariables"]


def test_macos_falls_back_to_load_when_bootstrap_fails(sandbox: Sandbox) -> None:
    result = sandbox.install(STUB_FAIL="launchctl:bootstrap")
    bootstrap = ["launchctl", "bootstrap", f"gui/{UID}", str(sandbox.plist_path)]
    assert sandbox.calls()[1:] == [
        *LAUNCHCTL_INSTALL,
        bootstrap,
        bootstrap,
        bootstrap,  # retried: bootstrap right after bootout races launchd's teardown
        ["launchctl", "unload", str(sandbox.plist_path)],
        ["launchctl", "load", "-w", str(sandbox.plist_path)],
    ]
    assert "falling back to launchctl load" in result.stderr


def test_macos_install_fails_when_nothing_loads_it(sandbox: Sandbox) -> None:
    result = sandbox.run("install_service.sh", STUB_FAIL="launchctl:bootstrap launchctl:load")
    assert result.returncode == 1
    assert "launchctl load failed" in result.stderr


def test_macos_uninstall_boots_out_and_removes_and_is_idempotent(sandbox: Sandbox) -> None:
    sandbox.install()
    sandbox.reset_calls()
    first = sandbox.run("uninstall_service.sh")
    assert first.returncode == 0, first.stderr
    assert not sandbox.plist_path.exists()
    assert sandbox.calls() == [["launchctl", "bootout", f"gui/{UID}/{LABEL}"]]

    second = sandbox.run("uninstall_service.sh", STUB_FAIL="launchctl:bootout")  # as launchd says: not loaded
    assert second.returncode == 0, second.stderr
    assert "nothing to remove" in second.stdout
    assert sandbox.files_under_home() == []


# ── Linux ────────────────────────────────────────────────────────────────────


def test_linux_install_writes_unit_and_private_env_file(sandbox: Sandbox) -> None:
    result = sandbox.install(
        system="Linux",
        CLAUDE_PROXY_TOKEN=TOKEN,
        PROXY_PORT="18999",
        MODEL_NAME="a 'b' $c \\d",
        ANTHROPIC_BASE_URL="http://127.0.0.1:9/",
    )
    unit_text = sandbox.unit_path.read_text()
    unit = read_unit(sandbox.unit_path)
    service = {key: [unit_value(v) for v in values] for key, values in unit["Service"].items()}
    assert service["ExecStart"] == [str(sandbox.checkout / "run.sh")]
    assert service["WorkingDirectory"] == [str(sandbox.checkout)]
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == [str(sandbox.env_file)]
    assert service["StandardOutput"] == [f"append:{sandbox.checkout}/logs/stdout.log"]
    assert service["StandardError"] == [f"append:{sandbox.checkout}/logs/stderr.log"]
    path_setting, unbuffered = service["Environment"]
    assert path_setting.startswith("PATH=") and unbuffered == "PYTHONUNBUFFERED=1"
    assert path_setting.removeprefix("PATH=").split(":")[0] == str(sandbox.claude_dir)
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert "%%" in unit_text  # the checkout's "%" is escaped as a specifier
    assert TOKEN not in unit_text and "CLAUDE_PROXY_TOKEN" not in unit_text
    assert mode_of(sandbox.unit_path) == 0o644

    assert mode_of(sandbox.env_file) == 0o600
    assert mode_of(sandbox.env_file.parent) == 0o700
    assert source_env_file(
        sandbox.env_file, "CLAUDE_PROXY_TOKEN", "PROXY_PORT", "MODEL_NAME", "ANTHROPIC_BASE_URL"
    ) == [
        TOKEN,
        "18999",
        "a 'b' $c \\d",
        "http://127.0.0.1:9/",
    ]
    assert sandbox.calls() == SYSTEMCTL_INSTALL
    assert "loginctl enable-linger tester" in result.stdout
    assert "systemctl --user status claude-code-openai-proxy" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_linux_unit_is_checked_by_systemd_analyze(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.install(system="Linux", CLAUDE_PROXY_TOKEN=TOKEN)
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        # This machine cannot verify units. Say so, and check what can be checked without systemd.
        print("systemd-analyze is not installed: the unit was checked structurally only, NOT verified")
        unit = read_unit(sandbox.unit_path)
        assert set(unit) == {"Unit", "Service", "Install"}
        assert {"ExecStart", "WorkingDirectory", "Restart", "EnvironmentFile"} <= set(unit["Service"])
        return

    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700)
    env = {"HOME": str(sandbox.home), "XDG_RUNTIME_DIR": str(runtime_dir), "PATH": "/usr/bin:/bin"}

    def verify(unit_file: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [analyzer, "--user", "verify", str(unit_file)], env=env, capture_output=True, text=True, timeout=60
        )

    result = verify(sandbox.unit_path)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "claude-code-openai-proxy" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr

    # A control: the same check notices a broken copy, so the clean result above means something.
    broken = tmp_path / "broken" / UNIT
    broken.parent.mkdir()
    broken.write_text(sandbox.unit_path.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = verify(broken)
    assert "Restart" in result.stdout + result.stderr or "restart" in result.stdout + result.stderr


def test_linux_second_install_restarts_one_unit(sandbox: Sandbox) -> None:
    sandbox.install(system="Linux", CLAUDE_PROXY_TOKEN=TOKEN)
    unit, env = sandbox.unit_path.read_text(), sandbox.env_file.read_text()
    sandbox.install(system="Linux", CLAUDE_PROXY_TOKEN=TOKEN)
    assert (sandbox.unit_path.read_text(), sandbox.env_file.read_text()) == (unit, env)
    assert sorted(p.name for p in sandbox.unit_path.parent.iterdir()) == [UNIT]
    assert sorted(p.name for p in sandbox.env_file.parent.iterdir()) == ["env"]
    assert sandbox.calls() == SYSTEMCTL_INSTALL * 2


def test_linux_without_a_user_manager_explains_what_to_do(sandbox: Sandbox) -> None:
    result = sandbox.run("install_service.sh", system="Linux", STUB_FAIL="systemctl:daemon-reload")
    assert result.returncode == 1
    assert "XDG_RUNTIME_DIR" in result.stderr
    assert "loginctl enable-linger tester" in result.stderr
    assert sandbox.unit_path.exists()  # written, so a rerun from a proper session finishes the job
    assert sandbox.calls() == [["systemctl", "--user", "daemon-reload"]]


def test_linux_uninstall_disables_and_removes_and_is_idempotent(sandbox: Sandbox) -> None:
    sandbox.install(system="Linux", CLAUDE_PROXY_TOKEN=TOKEN)
    sandbox.reset_calls()
    first = sandbox.run("uninstall_service.sh", system="Linux")
    assert first.returncode == 0, first.stderr
    assert not sandbox.unit_path.exists()
    assert not sandbox.env_file.parent.exists()
    assert sandbox.calls() == [
        ["systemctl", "--user", "disable", "--now", UNIT],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "reset-failed", UNIT],
    ]
    second = sandbox.run("uninstall_service.sh", system="Linux", STUB_FAIL="systemctl:disable")
    assert second.returncode == 0, second.stderr
    assert "nothing to remove" in second.stdout
    assert sandbox.files_under_home() == []


# ── both systems ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("system", "target", "command"),
    [
        ("Darwin", f"Library/LaunchAgents/{LABEL}.plist", "launchctl bootstrap"),
        ("Linux", f".config/systemd/user/{UNIT}", "systemctl --user enable --now"),
    ],
)
def test_dry_run_prints_the_plan_and_touches_nothing(sandbox: Sandbox, system: str, target: str, command: str) -> None:
    result = sandbox.install("--dry-run", system=system, CLAUDE_PROXY_TOKEN=TOKEN, PROXY_PORT="18999")
    assert str(sandbox.home / target) in result.stdout
    assert command in result.stdout
    assert "CLAUDE_PROXY_TOKEN" in result.stdout and "********" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert "18999" in result.stdout
    assert sandbox.files_under_home() == []
    assert not (sandbox.checkout / "logs").exists()
    assert sandbox.calls() == []


@pytest.mark.parametrize("system", ["Darwin", "Linux"])
def test_uninstall_dry_run_touches_nothing(sandbox: Sandbox, system: str) -> None:
    sandbox.install(system=system, CLAUDE_PROXY_TOKEN=TOKEN)
    before = sandbox.files_under_home()
    sandbox.reset_calls()
    result = sandbox.run("uninstall_service.sh", "--dry-run", system=system)
    assert result.returncode == 0, result.stderr
    assert "Would remove" in result.stdout
    assert sandbox.files_under_home() == before
    assert sandbox.calls() == []


@pytest.mark.parametrize("script", ["install_service.sh", "uninstall_service.sh"])
def test_unknown_system_is_an_error(sandbox: Sandbox, script: str) -> None:
    result = sandbox.run(script, system="FreeBSD")
    assert result.returncode == 1
    assert "unsupported system 'FreeBSD'" in result.stderr
    assert sandbox.files_under_home() == [] and sandbox.calls() == []


@pytest.mark.parametrize("script", ["install_service.sh", "uninstall_service.sh"])
def test_help_and_bad_arguments(sandbox: Sandbox, script: str) -> None:
    help_result = sandbox.run(script, "--help")
    assert help_result.returncode == 0 and "Usage:" in help_result.stdout
    bad = sandbox.run(script, "--bogus")
    assert bad.returncode == 2 and "--bogus" in bad.stderr
    assert sandbox.files_under_home() == [] and sandbox.calls() == []


@pytest.mark.parametrize("system", ["Darwin", "Linux"])
def test_control_characters_in_a_setting_are_refused(sandbox: Sandbox, system: str) -> None:
    result = sandbox.run("install_service.sh", system=system, CLAUDE_PROXY_TOKEN="line1\nline2")
    assert result.returncode == 1
    assert "CLAUDE_PROXY_TOKEN contains a control character" in result.stderr
    assert sandbox.files_under_home() == [] and sandbox.calls() == []


def test_missing_run_sh_is_an_error(sandbox: Sandbox) -> None:
    (sandbox.checkout / "run.sh").unlink()
    result = sandbox.run("install_service.sh")
    assert result.returncode == 1 and "run.sh is missing" in result.stderr
    assert sandbox.files_under_home() == []


def test_claude_bin_setting_puts_its_folder_on_path(sandbox: Sandbox, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_executable(elsewhere / "claude-custom", "#!/bin/sh\n")
    sandbox.install(CLAUDE_BIN=str(elsewhere / "claude-custom"))
    env = load_plist(sandbox.plist_path)["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == str(elsewhere)
    assert env["CLAUDE_BIN"] == str(elsewhere / "claude-custom")


def test_missing_claude_warns_but_installs(sandbox: Sandbox) -> None:
    (sandbox.claude_dir / "claude").unlink()
    result = sandbox.install()
    assert "claude is not on PATH" in result.stderr
    assert sandbox.plist_path.exists()


def test_waits_for_the_health_url_with_curl(sandbox: Sandbox) -> None:
    sandbox.add_stub("curl")
    result = sandbox.install(PROXY_INSTALL_WAIT="5", PROXY_PORT="18999", STUB_CURL_CODE="200")
    assert "The proxy answers at http://127.0.0.1:18999/ (HTTP 200)" in result.stdout
    curl_calls = [call for call in sandbox.calls() if call[0] == "curl"]
    assert len(curl_calls) == 1 and curl_calls[0][-1] == "http://127.0.0.1:18999/"


def test_health_wait_gives_up_without_failing(sandbox: Sandbox) -> None:
    sandbox.add_stub("curl")  # answers 000, like curl when nothing listens
    result = sandbox.install(PROXY_INSTALL_WAIT="1", STUB_CURL_CODE="000")
    assert "does not answer at http://127.0.0.1:18880/ yet" in result.stdout
    assert len([call for call in sandbox.calls() if call[0] == "curl"]) >= 2


def test_no_wait_flag_skips_curl(sandbox: Sandbox) -> None:
    sandbox.add_stub("curl")
    sandbox.install("--no-wait", PROXY_INSTALL_WAIT="30")
    assert [call for call in sandbox.calls() if call[0] == "curl"] == []
