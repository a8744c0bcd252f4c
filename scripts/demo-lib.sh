#!/usr/bin/env bash
# What scripts/demo.sh and scripts/demo-secure.sh share, sourced by both
# after they set DEMO_NAME (and WAIT_WIDTH, the width of a step's name):
# the binaries (DEMO_SERVER, DEMO_CLIENT), the deadlines, a temp folder
# WORK, the list PIDS of what was started, a trap that stops all of it with
# SIGTERM (SIGKILL after STOP_SECS) and removes WORK however the script
# ends, and wait_for, which polls a step with a deadline and prints its time.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SERVER=${DEMO_SERVER:-./server} # the binaries can be overridden, e.g. debug builds
CLIENT=${DEMO_CLIENT:-./client}
DEADLINE_MS=${DEMO_DEADLINE_MS:-15000} # longest wait for any one step
STOP_SECS=5                            # longest wait for a process to exit
CHUNK=65536
WAIT_WIDTH=${WAIT_WIDTH:-52}

for bin in "$SERVER" "$CLIENT"; do
    [[ -x $bin ]] || { echo "$DEMO_NAME: $bin not found; run 'make all' first" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dropsync-$DEMO_NAME.XXXXXX")
PIDS=()

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# stop PID: SIGTERM, wait up to STOP_SECS, then SIGKILL. Prints the status.
stop() {
    local pid=$1 name=$2 waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && (( waited < STOP_SECS * 100 )); do
        sleep 0.01
        waited=$(( waited + 1 ))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "  $name did not stop in ${STOP_SECS}s: killed"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    local status=0
    wait "$pid" 2>/dev/null || status=$?
    echo "  $name (pid $pid) exited with status $status"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if (( ${#PIDS[@]} )); then
        echo "== stopping (SIGTERM)"
        # Clients first, so they leave while the server still listens.
        for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
            stop "${PIDS[i]%%:*}" "${PIDS[i]#*:}"
        done
    fi
    if (( status != 0 )); then
        for log in "$WORK"/*.log; do
            [[ -f $log ]] && { echo "---- $(basename "$log")"; tail -n 20 "$log"; }
        done
    fi
    rm -rf "$WORK"
    echo "== removed $WORK"
    exit "$status"
}
trap cleanup EXIT INT TERM

# wait_for WHAT COMMAND...: polls COMMAND until it succeeds, printing the
# time it took; fails the demo after DEADLINE_MS.
wait_for() {
    local what=$1 start
    shift
    start=$(now_ms)
    until "$@" 2>/dev/null; do
        if (( $(now_ms) - start > DEADLINE_MS )); then
            echo "$DEMO_NAME: FAILED: $what: not seen after ${DEADLINE_MS} ms" >&2
            exit 1
        fi
        sleep 0.005
    done
    printf "  %-${WAIT_WIDTH}s %6d ms\n" "$what" $(( $(now_ms) - start ))
}

same() { cmp -s "$1" "$2"; }

# start_server ROOT: the server on ephemeral loopback ports, its storage in
# ROOT; sets SEND_PORT and RECV_PORT from its "listening" line.
start_server() {
    "$SERVER" 0 0 --bind 127.0.0.1 --root "$1" >"$WORK/server.out" 2>"$WORK/server.log" &
    PIDS+=("$!:server")
    wait_for "server listening" grep -q "listening" "$WORK/server.out"
    LISTEN=$(grep -m1 "listening" "$WORK/server.out")
    SEND_PORT=$(sed -E 's/.*send=[^ ]*:([0-9]+).*/\1/' <<<"$LISTEN")
    RECV_PORT=$(sed -E 's/.*receive=[^ ]*:([0-9]+).*/\1/' <<<"$LISTEN")
    echo "  $LISTEN"
}
