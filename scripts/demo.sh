#!/usr/bin/env bash
# dropsync demo (`make demo`, after `make all` has built ./server and ./client):
# starts a server and two clients ("alice" and "bob") on temp folders with
# ephemeral ports, makes changes in one folder and shows each one arriving in
# the other with the time it took, then stops everything with SIGTERM and
# removes the temp folders. Every wait has a deadline; a trap cleans up
# whatever was started, however the script ends.
set -euo pipefail

cd "$(dirname "$0")/.."
SERVER=${DEMO_SERVER:-./server} # the binaries can be overridden, e.g. debug builds
CLIENT=${DEMO_CLIENT:-./client}
DEADLINE_MS=${DEMO_DEADLINE_MS:-15000} # longest wait for any one change
STOP_SECS=5                            # longest wait for a process to exit
CHUNK=65536

for bin in "$SERVER" "$CLIENT"; do
    [[ -x $bin ]] || { echo "demo: $bin not found; run 'make all' first" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dropsync-demo.XXXXXX")
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
            echo "demo: FAILED: $what: not seen after ${DEADLINE_MS} ms" >&2
            exit 1
        fi
        sleep 0.005
    done
    printf '  %-52s %6d ms\n' "$what" $(( $(now_ms) - start ))
}

same() { cmp -s "$1" "$2"; }
gone() { [[ ! -e $1 ]]; }

echo "== starting a server and two clients in $WORK"
"$SERVER" 0 0 --bind 127.0.0.1 --root "$WORK/server" >"$WORK/server.out" 2>"$WORK/server.log" &
PIDS+=("$!:server")
wait_for "server listening" grep -q "listening" "$WORK/server.out"
LISTEN=$(grep -m1 "listening" "$WORK/server.out")
SEND_PORT=$(sed -E 's/.*send=[^ ]*:([0-9]+).*/\1/' <<<"$LISTEN")
RECV_PORT=$(sed -E 's/.*receive=[^ ]*:([0-9]+).*/\1/' <<<"$LISTEN")
echo "  $LISTEN"

A="$WORK/alice"
B="$WORK/bob"
mkdir -p "$A" "$B"
for who in alice bob; do
    RUST_LOG=${RUST_LOG:-info} "$CLIENT" 127.0.0.1 "$SEND_PORT" "$RECV_PORT" "$WORK/$who" "$CHUNK" \
        --label "$who" 2>"$WORK/$who.log" &
    PIDS+=("$!:client $who")
    wait_for "client $who connected" grep -q "reconciled" "$WORK/$who.log"
done

echo "== changes made in alice's folder, arriving in bob's"
echo "hello from alice" >"$A/hello.txt"
wait_for "create hello.txt" same "$A/hello.txt" "$B/hello.txt"

mkdir -p "$A/docs/notes"
echo "buy milk" >"$A/docs/notes/todo.txt"
wait_for "create docs/notes/todo.txt (nested folders)" same "$A/docs/notes/todo.txt" "$B/docs/notes/todo.txt"

echo "second line" >>"$A/hello.txt"
wait_for "edit hello.txt" same "$A/hello.txt" "$B/hello.txt"

head -c 3000000 /dev/urandom >"$A/photo.bin"
wait_for "create photo.bin (3 MB, $(( 3000000 / CHUNK + 1 )) chunks)" same "$A/photo.bin" "$B/photo.bin"

rm "$A/docs/notes/todo.txt"
wait_for "delete docs/notes/todo.txt" gone "$B/docs/notes/todo.txt"

mv "$A/hello.txt" "$A/greeting.txt"
wait_for "rename hello.txt -> greeting.txt" same "$A/greeting.txt" "$B/greeting.txt"
wait_for "  (and hello.txt is gone)" gone "$B/hello.txt"

echo "== and one the other way"
echo "hi alice, bob here" >"$B/reply.txt"
wait_for "create reply.txt in bob's folder" same "$B/reply.txt" "$A/reply.txt"

echo "== both folders:"
for who in alice bob; do
    echo "  $who: $(cd "$WORK/$who" && find . -path ./.dropsync -prune -o -type f -print | sort | tr '\n' ' ')"
done
