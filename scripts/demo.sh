#!/usr/bin/env bash
# dropsync demo (`make demo`, after `make all` has built ./server and ./client):
# starts a server and two clients ("alice" and "bob") on temp folders with
# ephemeral ports, makes changes in one folder and shows each one arriving in
# the other with the time it took, then stops everything with SIGTERM and
# removes the temp folders. Every wait has a deadline; a trap cleans up
# whatever was started, however the script ends.
set -euo pipefail

DEMO_NAME=demo
# shellcheck source=scripts/demo-lib.sh
source "$(dirname "$0")/demo-lib.sh"
gone() { [[ ! -e $1 ]]; }

echo "== starting a server and two clients in $WORK"
start_server "$WORK/server"

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
