# Sourced by a cluster bench script: $BIN_DIR holds the release engine and loadgen (built
# here when it is not set), the fd limit is the hard one, and `cpu_ticks PID` gives the
# CPU ticks (user and system) a process has used.
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p engine -p loadgen
  BIN_DIR=target/release
fi
ulimit -n "$(ulimit -Hn)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
