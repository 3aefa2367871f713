#!/usr/bin/env bash
# The store's per-message write pattern on two layouts, side by side: the engine's redb
# tables, and the same tables in fjall (an LSM tree). Builds benches/store-layouts (not
# part of the workspace) and runs each layout at each batch size on the disk under OUT.
# See benches/store-layouts/src/main.rs for what one message writes.
#
# Knobs (environment): MESSAGES (1000000), USERS (10000), BATCHES ("64 512"),
# LAYOUTS ("redb fjall"), RATE (0: as fast as commits go; else messages a second, paced),
# OUT (target/store-layouts; each run's files are removed after it), FJALL_MEMTABLE_MB
# (fjall's memtable per keyspace, its default 64: a flush's burst of writes is what stalls
# the journal's fdatasync on a shared disk).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000}
USERS=${USERS:-10000}
BATCHES=${BATCHES:-"64 512"}
LAYOUTS=${LAYOUTS:-"redb fjall"}
RATE=${RATE:-0}
OUT=${OUT:-target/store-layouts}
(cd benches/store-layouts && cargo build --release --quiet)
bin=benches/store-layouts/target/release/store-layouts
mkdir -p "$OUT"
for batch in $BATCHES; do
  for layout in $LAYOUTS; do
    "$bin" "$layout" "$OUT/$layout-$batch" --messages "$MESSAGES" --users "$USERS" --batch "$batch" --rate "$RATE"
    rm -rf "${OUT:?}/$layout-$batch"
    echo
  done
done
