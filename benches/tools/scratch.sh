# Sourced by a bench script: a scratch directory ($work) and the processes the script
# starts (it appends each pid to $pids). `stop_all` stops them and forgets them; on exit
# they are stopped and the directory is removed.
work=$(mktemp -d)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
