#!/usr/bin/env bash
# Issue 8 benchmark (not a test): upload time of `client --once` with
# --parallel 1 and 8, for 1,000 files of 64 KiB and for one 256 MiB file,
# on plain loopback and through the latency proxy at 20 ms round trip.
# Prints a table. Bounded: every run has a timeout; everything it starts is
# killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p dropsync-server -p dropsync-client -p dropsync-testkit
BIN=target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dropsync-bench-parallel.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
CHUNK=${CHUNK:-1048576}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}

# Data sets, made once.
mkdir -p "$WORK/small" "$WORK/large"
for i in $(seq 0 999); do head -c 65536 /dev/urandom > "$WORK/small/f$i.bin"; done
head -c $((256 * 1024 * 1024)) /dev/urandom > "$WORK/large/big.bin"

wait_line() { # file pattern
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for $2 in $1" >&2; return 1
}

start_server() { # → sets SEND RECV
  local root="$WORK/root-$RANDOM"
  "$BIN/server" 0 0 --bind 127.0.0.1 --root "$root" -q > "$WORK/server.out" &
  PIDS+=($!); SERVER=$!
  wait_line "$WORK/server.out" listening
  SEND=$(sed -E 's/.*send=[^:]+:([0-9]+).*/\1/' "$WORK/server.out")
  RECV=$(sed -E 's/.*receive=[^:]+:([0-9]+).*/\1/' "$WORK/server.out")
}

start_proxy() { # target-port one-way-ms → echo port
  local out="$WORK/proxy-$1.out"
  "$BIN/latency-proxy" "127.0.0.1:$1" "$2" "$RUN_TIMEOUT" > "$out" &
  PIDS+=($!)
  wait_line "$out" listening
  sed -E 's/.*port=([0-9]+).*/\1/' "$out"
}

# run <data dir> <parallel> <one-way delay ms> → seconds
run() {
  start_server
  local s=$SEND r=$RECV
  if [ "$3" -gt 0 ]; then s=$(start_proxy "$SEND" "$3"); r=$(start_proxy "$RECV" "$3"); fi
  local folder="$WORK/client-$RANDOM"
  cp -r "$1" "$folder"
  local t0 t1
  t0=$(date +%s.%N)
  timeout "$RUN_TIMEOUT" "$BIN/client" 127.0.0.1 "$s" "$r" "$folder" "$CHUNK" --once -q --parallel "$2"
  t1=$(date +%s.%N)
  kill "$SERVER" 2>/dev/null || true
  rm -rf "$folder"
  echo "$t1 - $t0" | bc
}

printf '%-22s %-10s %12s %12s %9s\n' workload network "parallel 1" "parallel 8" speedup
for net in 0 10; do
  label=$([ "$net" = 0 ] && echo loopback || echo "20 ms RTT")
  for set in small large; do
    name=$([ "$set" = small ] && echo "1000 × 64 KiB" || echo "1 × 256 MiB")
    t1=$(run "$WORK/$set" 1 "$net")
    t8=$(run "$WORK/$set" 8 "$net")
    printf '%-22s %-10s %11.2fs %11.2fs %8.1f×\n' "$name" "$label" "$t1" "$t8" "$(echo "$t1 / $t8" | bc -l)"
  done
done
