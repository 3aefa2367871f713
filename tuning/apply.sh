#!/usr/bin/env bash
# Applies ../sysctl.conf to the running kernel, saying what it changed, and records the
# previous values so `apply.sh --revert` restores them. Needs root.
#   sudo tuning/apply.sh            apply
#   sudo tuning/apply.sh --dry-run  show what would change
#   sudo tuning/apply.sh --revert   restore the values recorded by the last apply
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
conf="${SYSCTL_CONF:-$here/../sysctl.conf}"
state_dir="${ENGINE_TUNING_STATE:-/var/lib/engine-tuning}"
previous="$state_dir/previous.conf"
mode="${1:-apply}"

key_path() { echo "/proc/sys/${1//.//}"; }

if [ "$mode" = "--revert" ]; then
  [ -f "$previous" ] || { echo "apply.sh: nothing to revert ($previous missing)" >&2; exit 1; }
  while IFS= read -r line; do
    key="${line%% = *}"; value="${line#* = }"
    sysctl -q -w "$key=$value" && echo "restored $key = $value"
  done < "$previous"
  exit 0
fi
case "$mode" in apply|--dry-run) ;; *) echo "usage: apply.sh [--dry-run|--revert]" >&2; exit 2 ;; esac
if [ "$mode" = apply ] && [ "$(id -u)" -ne 0 ]; then
  echo "apply.sh: run as root (sysctl -w needs it), or use --dry-run" >&2; exit 1
fi
[ "$mode" = apply ] && mkdir -p "$state_dir" && : > "$previous.new"
changed=0
while IFS= read -r line; do
  line="${line%%#*}"; [ -z "${line// }" ] && continue
  key="$(echo "${line%%=*}" | xargs)"; want="$(echo "${line#*=}" | xargs)"
  path="$(key_path "$key")"
  if [ ! -e "$path" ]; then echo "skip    $key (not in this kernel: module not loaded?)"; continue; fi
  have="$(xargs < "$path")"
  if [ "$have" = "$want" ]; then echo "ok      $key = $have"; continue; fi
  echo "change  $key: $have -> $want"
  changed=$((changed + 1))
  if [ "$mode" = apply ]; then
    echo "$key = $have" >> "$previous.new"
    sysctl -q -w "$key=$want" || echo "FAILED  $key (read-only here?)" >&2
  fi
done < "$conf"
if [ "$mode" = apply ]; then
  mv "$previous.new" "$previous"
  echo "$changed changed; previous values in $previous (apply.sh --revert restores them)"
else
  echo "$changed would change (dry run)"
fi
