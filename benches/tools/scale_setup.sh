# Sourced by the scale runs (million.sh, drain.sh) after they set CONNECTIONS, PORT and
# OUT: builds the release binaries (unless BIN_DIR is set), applies the kernel tuning as
# root (reverted on exit), raises the fd limit, sets SOCKETS (auto) and REACTORS (one per
# core with direct descriptors, else as many fd tables as CONNECTIONS need; unless set),
# checks the host, and installs the EXIT trap that stops the engine ($engine_pid) and
# reverts the tuning.
# usage: source benches/tools/scale_setup.sh NAME
SCALE_RUN=${1:-scale run}
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p engine -p loadgen
  BIN_DIR=target/release
fi

applied=""
if [ "$(id -u)" -eq 0 ]; then
  ENGINE_TUNING_STATE="$OUT/tuning" bash tuning/apply.sh | tee "$OUT/tuning.txt"
  applied=1
else
  echo "$SCALE_RUN: not root; running with the kernel settings as they are" >&2
fi

# Where sockets live (the engine's and the loadgen's --sockets). As io_uring direct
# descriptors, one reactor (and one loadgen worker) per core holds its share; in the fd
# table each holds RLIMIT_NOFILE, so the count needs as many reactors as tables.
SOCKETS=${SOCKETS:-auto}
ulimit -n "$(ulimit -Hn)"
if [ -z "${REACTORS:-}" ]; then
  if [ "$SOCKETS" != fd-table ] && "$BIN_DIR/engine" check --connections "$CONNECTIONS" \
      --reactors "$(nproc)" --sockets "$SOCKETS" | grep -q "sockets in io_uring"; then
    REACTORS=$(nproc)
  else
    SOCKETS=fd-table
    per_table=$(( $(ulimit -Hn) - 64 ))
    REACTORS=$(( (CONNECTIONS + per_table - 1) / per_table ))
  fi
fi
"$BIN_DIR/engine" check --connections "$CONNECTIONS" --reactors "$REACTORS" --sockets "$SOCKETS" \
  | tee "$OUT/check.txt" || {
  echo "$SCALE_RUN: the host cannot hold $CONNECTIONS (see $OUT/check.txt)" >&2
  exit 1
}

engine_pid=""
cleanup() {
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
  if [ -n "$applied" ]; then ENGINE_TUNING_STATE="$OUT/tuning" bash tuning/apply.sh --revert > /dev/null; fi
}
trap cleanup EXIT

