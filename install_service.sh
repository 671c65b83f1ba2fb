#!/usr/bin/env bash
# Install claude-code-openai-proxy as a per-user service that starts at login
# and restarts when it dies:
#   macOS: a LaunchAgent, ~/Library/LaunchAgents/com.claude-code.openai-proxy.plist
#   Linux: a systemd user unit, ~/.config/systemd/user/claude-code-openai-proxy.service
# Run ./install_service.sh --help for the details. Works with the bash 3.2 that macOS ships.
set -euo pipefail

readonly LABEL="com.claude-code.openai-proxy"
readonly UNIT_NAME="claude-code-openai-proxy.service"
readonly ENV_PLACEHOLDER="<!-- __ENVIRONMENT__ -->"
readonly DEFAULT_PATH_DIRS="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
readonly MASK="********"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
readonly REPO_DIR
readonly RUN_SH="$REPO_DIR/run.sh"
readonly LOG_DIR="$REPO_DIR/logs"
readonly TEMPLATE="$REPO_DIR/$LABEL.plist"
readonly PLIST_PATH="$HOME/Library/LaunchAgents/$LABEL.plist"
readonly CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
readonly UNIT_PATH="$CONFIG_HOME/systemd/user/$UNIT_NAME"
readonly ENV_DIR="$CONFIG_HOME/claude-code-openai-proxy"
readonly ENV_FILE="$ENV_DIR/env"
readonly USER_NAME="${USER:-$(id -un)}"

DRY_RUN=0
WAIT_SECONDS="${PROXY_INSTALL_WAIT:-30}"
SERVICE_PATH=""
SETTING_NAMES=()
TMP_FILE=""

usage() {
	cat <<EOF
Usage: ./install_service.sh [--dry-run] [--no-wait]

Installs this checkout ($REPO_DIR) as a per-user service running run.sh.
  macOS  LaunchAgent $PLIST_PATH
         (mode 600), loaded with launchctl bootstrap gui/\$UID (launchctl load on old macOS)
  Linux  systemd user unit $UNIT_PATH
         plus the settings file $ENV_FILE (mode 600),
         then systemctl --user daemon-reload and enable --now
Logs go to $LOG_DIR/stdout.log and stderr.log.

The service gets the settings present in this shell's environment: every
CLAUDE_*, PROXY_* and ANTHROPIC_* variable (for example PROXY_PORT,
CLAUDE_PROXY_TOKEN, CLAUDE_CODE_OAUTH_TOKEN), MODEL_NAME and IS_SANDBOX, and a
PATH that includes the folder of the claude binary found now. Running it again
rewrites the service from the current environment and restarts it.

Options:
  -n, --dry-run  print what would be written and run (tokens masked); change nothing
      --no-wait  do not wait for the proxy to answer after installing
  -h, --help     show this help

Environment:
  PROXY_INSTALL_WAIT  seconds to wait for http://127.0.0.1:\$PROXY_PORT/ (default 30, 0 = don't)

Remove the service with ./uninstall_service.sh.
EOF
}

die() {
	printf 'install_service.sh: error: %s\n' "$*" >&2
	exit 1
}

warn() {
	printf 'install_service.sh: warning: %s\n' "$*" >&2
}

note() {
	printf '%s\n' "$*"
}

cleanup() {
	if [ -n "$TMP_FILE" ]; then
		rm -f "$TMP_FILE"
	fi
}

parse_args() {
	while [ "$#" -gt 0 ]; do
		case "$1" in
		-n | --dry-run) DRY_RUN=1 ;;
		--no-wait) WAIT_SECONDS=0 ;;
		-h | --help)
			usage
			exit 0
			;;
		*)
			printf 'install_service.sh: unknown argument: %s (see --help)\n' "$1" >&2
			exit 2
			;;
		esac
		shift
	done
	case "$WAIT_SECONDS" in
	'' | *[!0-9]*) die "PROXY_INSTALL_WAIT must be a whole number of seconds, got '$WAIT_SECONDS'" ;;
	esac
}

detect_system() {
	local kernel
	kernel="$(uname -s)"
	case "$kernel" in
	Darwin) printf 'macos\n' ;;
	Linux) printf 'linux\n' ;;
	*) die "unsupported system '$kernel': this installer knows macOS (launchd) and Linux (systemd)" ;;
	esac
}

# Values go into XML, systemd files and launchd's environment; none of them has a use for control characters.
check_value() {
	local name="$1" value="$2"
	case "$value" in
	*[[:cntrl:]]*) die "$name contains a control character (newline, tab, ...); refusing to write it to a service" ;;
	esac
}

is_setting_name() {
	case "$1" in
	PROXY_INSTALL_*) return 1 ;;                        # this installer's own knobs
	CLAUDE_CODE_ENTRYPOINT | CLAUDE_CODE_SSE_PORT) return 1 ;; # set by a surrounding Claude Code session
	CLAUDE_* | PROXY_* | ANTHROPIC_* | MODEL_NAME | IS_SANDBOX) return 0 ;;
	*) return 1 ;;
	esac
}

is_secret_name() {
	case "$1" in
	*TOKEN* | *KEY* | *SECRET* | *PASSWORD*) return 0 ;;
	*) return 1 ;;
	esac
}

is_collected() {
	local wanted="$1" name
	for name in ${SETTING_NAMES[@]+"${SETTING_NAMES[@]}"}; do
		if [ "$name" = "$wanted" ]; then
			return 0
		fi
	done
	return 1
}

collect_settings() {
	local name
	while IFS= read -r name; do
		if is_setting_name "$name"; then
			check_value "$name" "${!name}"
			SETTING_NAMES+=("$name")
		fi
	done < <(compgen -e | LC_ALL=C sort)
}

# The value as the service gets it, or a mask for display.
shown_value() {
	local name="$1" masked="$2"
	if [ "$masked" = 1 ] && is_secret_name "$name"; then
		printf '%s' "$MASK"
	else
		printf '%s' "${!name}"
	fi
}

absolute_path() {
	local path="$1"
	case "$path" in
	/*) printf '%s\n' "$path" ;;
	*) printf '%s/%s\n' "$(cd "$(dirname "$path")" && pwd -P)" "$(basename "$path")" ;;
	esac
}

# CLAUDE_BIN if set, else `claude` on PATH, else the native installer's locations. Empty if none.
find_claude() {
	local found="" candidate
	if [ -n "${CLAUDE_BIN:-}" ]; then
		found="$(command -v -- "$CLAUDE_BIN" || true)"
	else
		found="$(command -v claude || true)"
		if [ -z "$found" ]; then
			for candidate in "$HOME/.local/bin/claude" "$HOME/.claude/local/claude"; do
				if [ -x "$candidate" ]; then
					found="$candidate"
					break
				fi
			done
		fi
	fi
	if [ -n "$found" ]; then
		absolute_path "$found"
	fi
}

# launchd and systemd start jobs with a minimal PATH: give the service the folders of claude and
# node first, then this shell's absolute PATH entries, then the system defaults, without duplicates.
build_service_path() {
	local claude_path="$1" node_path dir result="" entries=() path_parts=() default_parts=()
	if [ -n "$claude_path" ]; then
		entries+=("$(dirname "$claude_path")")
	fi
	node_path="$(command -v node || true)"
	if [ -n "$node_path" ]; then
		entries+=("$(dirname "$(absolute_path "$node_path")")")
	fi
	IFS=: read -r -a path_parts <<<"${PATH:-}"
	IFS=: read -r -a default_parts <<<"$DEFAULT_PATH_DIRS"
	entries+=(${path_parts[@]+"${path_parts[@]}"} "${default_parts[@]}")
	for dir in "${entries[@]}"; do
		case "$dir" in
		/*) ;;
		*) continue ;; # relative entries would resolve against the service's working directory
		esac
		case ":$result:" in
		*":$dir:"*) continue ;;
		esac
		result="${result:+$result:}$dir"
	done
	printf '%s\n' "$result"
}

# Literal search and replace (bash's ${x//a/b} treats & in b specially since bash 5.2).
replace_all() {
	local text="$1" pattern="$2" replacement="$3" out=""
	while [[ "$text" == *"$pattern"* ]]; do
		out+="${text%%"$pattern"*}$replacement"
		text="${text#*"$pattern"}"
	done
	printf '%s' "$out$text"
}

xml_escape() {
	local text="$1"
	text="$(replace_all "$text" '&' '&amp;')"
	text="$(replace_all "$text" '<' '&lt;')"
	text="$(replace_all "$text" '>' '&gt;')"
	text="$(replace_all "$text" '"' '&quot;')"
	replace_all "$text" "'" '&apos;'
}

# systemd expands %-specifiers in unit settings: a literal % is %%.
escape_unit_value() {
	replace_all "$1" '%' '%%'
}

# A double-quoted word for ExecStart=/Environment=: C escapes, specifiers, and $ (ExecStart expands $VAR).
quote_unit_word() {
	local text="$1"
	text="$(replace_all "$text" "\\" "\\\\")"
	text="$(replace_all "$text" '"' '\"')"
	text="$(replace_all "$text" '$' '$$')"
	printf '"%s"' "$(escape_unit_value "$text")"
}

# NAME="value" as systemd's EnvironmentFile= and sh both read it.
quote_env_value() {
	local text="$1"
	text="$(replace_all "$text" "\\" "\\\\")"
	text="$(replace_all "$text" '"' '\"')"
	text="$(replace_all "$text" '$' '\$')"
	text="$(replace_all "$text" '`' '\`')"
	printf '"%s"' "$text"
}

render_plist() {
	local masked="$1" line name env_xml="" value_xml repo_xml path_xml
	repo_xml="$(xml_escape "$REPO_DIR")"
	path_xml="$(xml_escape "$SERVICE_PATH")"
	for name in ${SETTING_NAMES[@]+"${SETTING_NAMES[@]}"}; do
		value_xml="$(xml_escape "$(shown_value "$name" "$masked")")"
		env_xml+="$(printf '\t\t<key>%s</key>\n\t\t<string>%s</string>' "$name" "$value_xml")"$'\n'
	done
	while IFS= read -r line || [ -n "$line" ]; do
		if [[ "$line" == *"$ENV_PLACEHOLDER"* ]]; then
			printf '%s' "$env_xml"
			continue
		fi
		line="$(replace_all "$line" '__REPO_DIR__' "$repo_xml")"
		line="$(replace_all "$line" '__PATH__' "$path_xml")"
		printf '%s\n' "$line"
	done <"$TEMPLATE"
}

render_unit() {
	cat <<EOF
# Written by install_service.sh of the checkout below; rerun it rather than editing this file.
# The settings (and any tokens) are in the EnvironmentFile, which has mode 600.
[Unit]
Description=Claude Code OpenAI-compatible proxy (claude-code-openai-proxy)

[Service]
Type=simple
WorkingDirectory=$(escape_unit_value "$REPO_DIR")
ExecStart=$(quote_unit_word "$RUN_SH")
Environment=$(quote_unit_word "PATH=$SERVICE_PATH")
Environment=PYTHONUNBUFFERED=1
EnvironmentFile=$(escape_unit_value "$ENV_FILE")
Restart=on-failure
RestartSec=5
StandardOutput=append:$(escape_unit_value "$LOG_DIR/stdout.log")
StandardError=append:$(escape_unit_value "$LOG_DIR/stderr.log")

[Install]
WantedBy=default.target
EOF
}

render_env_file() {
	local masked="$1" name
	printf '# Settings of %s, written by install_service.sh. Mode 600: it may hold tokens.\n' "$UNIT_NAME"
	printf '# After editing: systemctl --user restart %s\n' "${UNIT_NAME%.service}"
	for name in ${SETTING_NAMES[@]+"${SETTING_NAMES[@]}"}; do
		printf '%s=%s\n' "$name" "$(quote_env_value "$(shown_value "$name" "$masked")")"
	done
}

# Writes content (plus a newline) to path atomically. mktemp creates the file with mode 600, so a
# secret is never readable by others, not even for a moment.
write_file() {
	local path="$1" mode="$2" content="$3"
	TMP_FILE="$(mktemp "$(dirname "$path")/.$(basename "$path").XXXXXX")"
	printf '%s\n' "$content" >"$TMP_FILE"
	chmod "$mode" "$TMP_FILE"
	mv -f "$TMP_FILE" "$path"
	TMP_FILE=""
}

# A second run from a shell that lacks a setting silently drops it; say so (it may be the token).
warn_dropped_settings() {
	local file="$1" kind="$2" name script
	if [ ! -f "$file" ]; then
		return 0
	fi
	if [ "$kind" = plist ]; then
		script='s/^[[:space:]]*<key>\([A-Za-z_][A-Za-z0-9_]*\)<\/key>[[:space:]]*$/\1/p'
	else
		script='s/^\([A-Za-z_][A-Za-z0-9_]*\)=.*$/\1/p'
	fi
	while IFS= read -r name; do
		if is_setting_name "$name" && ! is_collected "$name"; then
			warn "the installed service had $name, which this shell does not set: it is dropped" \
				"(export it and rerun to keep it)"
		fi
	done < <(sed -n "$script" "$file")
}

show_command() {
	printf '  $'
	printf ' %q' "$@"
	printf '\n'
}

lint_plist() {
	local output
	if ! command -v plutil >/dev/null 2>&1; then
		return 0
	fi
	if ! output="$(plutil -lint "$PLIST_PATH" 2>&1)"; then
		die "plutil -lint rejected $PLIST_PATH: $output"
	fi
}

# bootout then bootstrap reloads the job with the new file. bootstrap right after bootout can fail
# with "5: Input/output error" while launchd still tears the old job down, so it is retried.
load_agent() {
	local domain="gui/$UID" attempt output=""
	launchctl bootout "$domain/$LABEL" >/dev/null 2>&1 || true
	launchctl enable "$domain/$LABEL" >/dev/null 2>&1 || true
	for attempt in 1 2 3; do
		if output="$(launchctl bootstrap "$domain" "$PLIST_PATH" 2>&1)"; then
			return 0
		fi
		if [ "$attempt" -lt 3 ]; then
			sleep 1
		fi
	done
	warn "launchctl bootstrap $domain failed (${output:-no message}); falling back to launchctl load"
	launchctl unload "$PLIST_PATH" >/dev/null 2>&1 || true
	if ! output="$(launchctl load -w "$PLIST_PATH" 2>&1)"; then
		die "launchctl load failed too (${output:-no message}). The plist is in place: $PLIST_PATH"
	fi
}

install_macos() {
	local content
	[ -f "$TEMPLATE" ] || die "the plist template $TEMPLATE is missing"
	if [ "$DRY_RUN" = 1 ]; then
		note "Would write $PLIST_PATH (mode 600):"
		render_plist 1
		note ""
		note "Would run:"
		show_command mkdir -p "$LOG_DIR"
		show_command plutil -lint "$PLIST_PATH"
		show_command launchctl bootout "gui/$UID/$LABEL"
		show_command launchctl enable "gui/$UID/$LABEL"
		show_command launchctl bootstrap "gui/$UID" "$PLIST_PATH"
		note "  (on failure, after two retries: launchctl load -w $PLIST_PATH)"
		return 0
	fi
	command -v launchctl >/dev/null 2>&1 || die "launchctl not found"
	if [ "$(id -u)" = 0 ]; then
		warn "running as root: a LaunchAgent belongs to the logged-in user; run this without sudo"
	fi
	content="$(render_plist 0)"
	mkdir -p "$LOG_DIR" "$(dirname "$PLIST_PATH")"
	warn_dropped_settings "$PLIST_PATH" plist
	write_file "$PLIST_PATH" 600 "$content"
	note "Wrote $PLIST_PATH (mode 600)"
	lint_plist
	load_agent
	note "Loaded $LABEL into gui/$UID"
}

fail_without_user_manager() {
	die "systemctl --user could not talk to your user service manager.
  This happens in shells without a systemd user session (su/sudo, some containers, ssh without PAM).
  Log in as $USER_NAME directly (or: machinectl shell $USER_NAME@), check that XDG_RUNTIME_DIR is set
  (normally /run/user/$UID; it is '${XDG_RUNTIME_DIR:-unset}' here), and consider
  'loginctl enable-linger $USER_NAME' so the user manager runs without a login.
  The files are written ($UNIT_PATH, $ENV_FILE); rerun this script once 'systemctl --user status' works."
}

remind_linger() {
	local linger=""
	if command -v loginctl >/dev/null 2>&1; then
		linger="$(loginctl show-user "$USER_NAME" --property=Linger --value 2>/dev/null || true)"
	fi
	if [ "$linger" != yes ]; then
		note "To start it at boot without logging in: loginctl enable-linger $USER_NAME"
	fi
}

install_linux() {
	local unit env_content
	if [ "$DRY_RUN" = 1 ]; then
		note "Would write $ENV_FILE (mode 600, folder mode 700):"
		render_env_file 1
		note ""
		note "Would write $UNIT_PATH (mode 644):"
		render_unit
		note ""
		note "Would run:"
		show_command mkdir -p "$LOG_DIR"
		show_command systemctl --user daemon-reload
		show_command systemctl --user try-restart "$UNIT_NAME"
		show_command systemctl --user enable --now "$UNIT_NAME"
		return 0
	fi
	command -v systemctl >/dev/null 2>&1 || die "systemctl not found: on Linux this installer needs systemd"
	unit="$(render_unit)"
	env_content="$(render_env_file 0)"
	mkdir -p "$LOG_DIR" "$(dirname "$UNIT_PATH")" "$ENV_DIR"
	chmod 700 "$ENV_DIR"
	warn_dropped_settings "$ENV_FILE" env
	write_file "$ENV_FILE" 600 "$env_content"
	write_file "$UNIT_PATH" 644 "$unit"
	note "Wrote $UNIT_PATH"
	note "Wrote $ENV_FILE (mode 600)"
	systemctl --user daemon-reload || fail_without_user_manager
	# try-restart applies the new files if an older install is running; enable --now starts a new one.
	systemctl --user try-restart "$UNIT_NAME" ||
		die "restarting $UNIT_NAME failed; see: systemctl --user status $UNIT_NAME"
	systemctl --user enable --now "$UNIT_NAME" ||
		die "systemctl --user enable --now $UNIT_NAME failed; see: systemctl --user status $UNIT_NAME"
	note "Enabled and started $UNIT_NAME"
	remind_linger
}

health_url() {
	local host="${PROXY_HOST:-127.0.0.1}"
	case "$host" in
	'' | 0.0.0.0) host=127.0.0.1 ;;
	:: | '[::]') host='[::1]' ;;
	\[*) ;;
	*:*) host="[$host]" ;;
	esac
	printf 'http://%s:%s/\n' "$host" "${PROXY_PORT:-18880}"
}

# Any HTTP status counts as up (the health route may want the token, which stays out of curl's argv).
wait_for_health() {
	local url code deadline
	url="$(health_url)"
	if [ "$WAIT_SECONDS" = 0 ]; then
		return 0
	fi
	if ! command -v curl >/dev/null 2>&1; then
		note "curl not found; check $url yourself"
		return 0
	fi
	note "Waiting up to ${WAIT_SECONDS}s for $url ..."
	deadline=$((SECONDS + WAIT_SECONDS))
	while :; do
		code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)"
		if [ -n "$code" ] && [ "$code" != 000 ]; then
			note "The proxy answers at $url (HTTP $code)."
			return 0
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			break
		fi
		sleep 1
	done
	note "The proxy does not answer at $url yet. The first start creates the venv and installs"
	note "the requirements, which can take a minute; if it stays down, read $LOG_DIR/stderr.log."
}

warn_about_settings() {
	local system="$1"
	case "${PROXY_HOST:-127.0.0.1}" in
	127.* | localhost | ::1) ;;
	*)
		if ! is_collected CLAUDE_PROXY_TOKEN; then
			warn "PROXY_HOST=${PROXY_HOST} exposes the proxy beyond this machine without CLAUDE_PROXY_TOKEN"
		fi
		;;
	esac
	if [ "$system" = macos ] && ! is_collected CLAUDE_CODE_OAUTH_TOKEN && ! is_collected ANTHROPIC_API_KEY; then
		note "Note: claude -p started by launchd may report \"Not logged in\" although your terminal login"
		note "works (it cannot always read the Keychain). If so, run 'claude setup-token' and reinstall with"
		note "  CLAUDE_CODE_OAUTH_TOKEN=<token> ./install_service.sh"
	fi
}

print_usage_hints() {
	local system="$1"
	note ""
	if [ "$system" = macos ]; then
		note "Status:    launchctl print gui/$UID/$LABEL"
		note "Restart:   launchctl kickstart -k gui/$UID/$LABEL"
	else
		note "Status:    systemctl --user status ${UNIT_NAME%.service}"
		note "Restart:   systemctl --user restart ${UNIT_NAME%.service}"
		note "Journal:   journalctl --user -u ${UNIT_NAME%.service}"
	fi
	note "Logs:      tail -f $LOG_DIR/stdout.log $LOG_DIR/stderr.log"
	note "Uninstall: $REPO_DIR/uninstall_service.sh"
}

main() {
	local system claude_path
	parse_args "$@"
	trap cleanup EXIT
	system="$(detect_system)"
	[ -x "$RUN_SH" ] || die "$RUN_SH is missing or not executable"
	check_value "the checkout path" "$REPO_DIR"
	check_value HOME "$HOME"

	claude_path="$(find_claude)"
	if [ -n "$claude_path" ]; then
		note "Found claude at $claude_path"
	elif [ -n "${CLAUDE_BIN:-}" ]; then
		warn "CLAUDE_BIN=$CLAUDE_BIN is not an executable; the service will fail until it is (then rerun this)"
	else
		warn "claude is not on PATH; install the Claude Code CLI, then rerun this so the service can find it"
	fi
	SERVICE_PATH="$(build_service_path "$claude_path")"
	check_value PATH "$SERVICE_PATH"
	collect_settings
	if [ "${#SETTING_NAMES[@]}" -gt 0 ]; then
		note "Settings passed to the service: ${SETTING_NAMES[*]}"
	else
		note "No CLAUDE_*/PROXY_*/ANTHROPIC_* settings in this shell; the service uses the defaults."
	fi
	if [ "$DRY_RUN" = 1 ]; then
		note "Dry run: nothing is written and nothing is run."
		note ""
	fi

	if [ "$system" = macos ]; then
		install_macos
	else
		install_linux
	fi
	if [ "$DRY_RUN" = 1 ]; then
		return 0
	fi
	warn_about_settings "$system"
	wait_for_health
	print_usage_hints "$system"
}

main "$@"
