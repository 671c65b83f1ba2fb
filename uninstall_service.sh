#!/usr/bin/env bash
# Stop and remove the per-user service that install_service.sh set up (macOS LaunchAgent or
# Linux systemd user unit). Safe to run when nothing is installed. The logs/ folder is kept.
set -euo pipefail

readonly LABEL="com.claude-code.openai-proxy"
readonly UNIT_NAME="claude-code-openai-proxy.service"
readonly PLIST_PATH="$HOME/Library/LaunchAgents/$LABEL.plist"
readonly CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
readonly UNIT_PATH="$CONFIG_HOME/systemd/user/$UNIT_NAME"
readonly WANTS_LINK="$CONFIG_HOME/systemd/user/default.target.wants/$UNIT_NAME"
readonly ENV_DIR="$CONFIG_HOME/claude-code-openai-proxy"
readonly ENV_FILE="$ENV_DIR/env"

DRY_RUN=0

usage() {
	cat <<EOF
Usage: ./uninstall_service.sh [--dry-run]

Stops the claude-code-openai-proxy service and removes its files:
  macOS  launchctl bootout gui/\$UID/$LABEL, then removes
         $PLIST_PATH
  Linux  systemctl --user disable --now $UNIT_NAME, then removes
         $UNIT_PATH
         and $ENV_FILE
Running it when nothing is installed does nothing and succeeds. Logs are kept.

Options:
  -n, --dry-run  print what would be stopped and removed; change nothing
  -h, --help     show this help
EOF
}

die() {
	printf 'uninstall_service.sh: error: %s\n' "$*" >&2
	exit 1
}

warn() {
	printf 'uninstall_service.sh: warning: %s\n' "$*" >&2
}

note() {
	printf '%s\n' "$*"
}

parse_args() {
	while [ "$#" -gt 0 ]; do
		case "$1" in
		-n | --dry-run) DRY_RUN=1 ;;
		-h | --help)
			usage
			exit 0
			;;
		*)
			printf 'uninstall_service.sh: unknown argument: %s (see --help)\n' "$1" >&2
			exit 2
			;;
		esac
		shift
	done
}

detect_system() {
	local kernel
	kernel="$(uname -s)"
	case "$kernel" in
	Darwin) printf 'macos\n' ;;
	Linux) printf 'linux\n' ;;
	*) die "unsupported system '$kernel': this script knows macOS (launchd) and Linux (systemd)" ;;
	esac
}

remove_file() {
	local path="$1"
	if [ -e "$path" ] || [ -L "$path" ]; then
		rm -f "$path"
		note "Removed $path"
	fi
}

unload_agent() {
	if ! command -v launchctl >/dev/null 2>&1; then
		warn "launchctl not found; only removing the file"
		return 0
	fi
	if launchctl bootout "gui/$UID/$LABEL" >/dev/null 2>&1; then
		note "Stopped $LABEL"
	elif [ -f "$PLIST_PATH" ]; then
		# Not loaded, or a macOS without bootout: the legacy call covers the second case.
		launchctl unload "$PLIST_PATH" >/dev/null 2>&1 || true
	fi
}

uninstall_macos() {
	if [ "$DRY_RUN" = 1 ]; then
		note "Would run:  launchctl bootout gui/$UID/$LABEL"
		note "Would remove $PLIST_PATH"
		return 0
	fi
	unload_agent
	if [ -f "$PLIST_PATH" ]; then
		remove_file "$PLIST_PATH"
	else
		note "No LaunchAgent file at $PLIST_PATH; nothing to remove."
	fi
}

stop_unit() {
	if ! command -v systemctl >/dev/null 2>&1; then
		warn "systemctl not found; only removing the files"
		return 0
	fi
	if systemctl --user disable --now "$UNIT_NAME" >/dev/null 2>&1; then
		note "Stopped and disabled $UNIT_NAME"
	elif [ -f "$UNIT_PATH" ]; then
		warn "systemctl --user disable --now $UNIT_NAME failed (no user session here?);" \
			"if it still runs, stop it from a login session"
	fi
}

uninstall_linux() {
	local installed=0
	if [ "$DRY_RUN" = 1 ]; then
		note "Would run:  systemctl --user disable --now $UNIT_NAME"
		note "Would remove $UNIT_PATH"
		note "Would remove $ENV_FILE (and its folder if empty)"
		note "Would run:  systemctl --user daemon-reload"
		return 0
	fi
	if [ -f "$UNIT_PATH" ] || [ -f "$ENV_FILE" ]; then
		installed=1
	fi
	stop_unit
	remove_file "$WANTS_LINK"
	remove_file "$UNIT_PATH"
	remove_file "$ENV_FILE"
	if [ -d "$ENV_DIR" ]; then
		rmdir "$ENV_DIR" 2>/dev/null || true
	fi
	if command -v systemctl >/dev/null 2>&1; then
		systemctl --user daemon-reload >/dev/null 2>&1 || true
		systemctl --user reset-failed "$UNIT_NAME" >/dev/null 2>&1 || true
	fi
	if [ "$installed" = 0 ]; then
		note "No systemd user unit at $UNIT_PATH; nothing to remove."
	fi
}

main() {
	local system
	parse_args "$@"
	system="$(detect_system)"
	if [ "$DRY_RUN" = 1 ]; then
		note "Dry run: nothing is stopped or removed."
	fi
	if [ "$system" = macos ]; then
		uninstall_macos
	else
		uninstall_linux
	fi
}

main "$@"
