#!/usr/bin/env bash
# dropsync secure-mode demo (`make demo-secure`, which builds ./server and
# ./client first): the set-up of README's "Running it for real", done by a
# script on temp folders with ephemeral ports on 127.0.0.1:
#   1. the server's fingerprint (`server fingerprint`), which clients pin;
#   2. each client's fingerprint (`client fingerprint`), enrolled on the
#      server (`server enroll`): from then on the server admits enrolled
#      keys only, over TLS 1.3 with both sides proving their key;
#   3. the server, and clients "alice" and "bob" with --server-fingerprint;
#      a file made in alice's folder arrives in bob's, and one the other way;
#   4. a client nobody enrolled, and one speaking the plain protocol, are
#      refused; `server revoke bob` shuts bob out within a second;
# then stops everything with SIGTERM and removes the temp folders. Every
# wait has a deadline; a trap cleans up whatever was started, however the
# script ends.
set -euo pipefail

DEMO_NAME=demo-secure
WAIT_WIDTH=56
# shellcheck source=scripts/demo-lib.sh
source "$(dirname "$0")/demo-lib.sh"
ROOT="$WORK/server"
# Not this demo's business: a key log file would hold the session keys.
unset SSLKEYLOGFILE

logged() { grep -q -- "$2" "$1"; }

# client_bg NAME ARGS...: a client syncing $WORK/NAME in the background.
client_bg() {
    local who=$1
    shift
    RUST_LOG=${RUST_LOG:-info} "$CLIENT" 127.0.0.1 "$SEND_PORT" "$RECV_PORT" "$WORK/$who" "$CHUNK" \
        --label "$who" "$@" 2>"$WORK/$who.log" &
    PIDS+=("$!:client $who")
}

echo "== keys and enrolment (in $WORK)"
SERVER_FP=$("$SERVER" fingerprint --root "$ROOT")
printf '  $ %-44s -> %s\n' "server fingerprint --root server" "$SERVER_FP"
for who in alice bob; do
    mkdir -p "$WORK/$who"
    fp=$("$CLIENT" fingerprint "$WORK/$who")
    printf '  $ %-44s -> %s\n' "client fingerprint $who" "$fp"
    echo "  \$ server enroll --root server --label $who ${fp:0:16}..."
    "$SERVER" enroll --root "$ROOT" --label "$who" "$fp" | sed 's/^/      /'
done

echo "== starting the server and two clients with --server-fingerprint ${SERVER_FP:0:16}..."
start_server "$ROOT"
echo "  server log: $(grep -m1 -o 'secure mode.*' "$WORK/server.log")"
for who in alice bob; do
    client_bg "$who" --server-fingerprint "$SERVER_FP"
    wait_for "client $who connected over TLS" logged "$WORK/$who.log" "reconciled"
done
echo "  bob pinned the server's key in .dropsync/server-fingerprint: $(cut -c1-16 "$WORK/bob/.dropsync/server-fingerprint")..."

echo "== a file made in alice's folder, arriving in bob's"
echo "hello from alice, over TLS" >"$WORK/alice/hello.txt"
wait_for "create hello.txt" same "$WORK/alice/hello.txt" "$WORK/bob/hello.txt"
head -c 3000000 /dev/urandom >"$WORK/alice/photo.bin"
wait_for "create photo.bin (3 MB)" same "$WORK/alice/photo.bin" "$WORK/bob/photo.bin"
echo "== and one the other way"
echo "hi alice, bob here" >"$WORK/bob/reply.txt"
wait_for "create reply.txt in bob's folder" same "$WORK/bob/reply.txt" "$WORK/alice/reply.txt"

echo "== who else gets in"
mkdir -p "$WORK/mallory"
client_bg mallory --server-fingerprint "$SERVER_FP"
wait_for "mallory (key not enrolled) refused" logged "$WORK/mallory.log" "did not admit"
stop "${PIDS[-1]%%:*}" "client mallory"
unset 'PIDS[-1]'
if timeout 10 "$CLIENT" 127.0.0.1 "$SEND_PORT" "$RECV_PORT" "$WORK/plain" "$CHUNK" --once \
    --label plain 2>"$WORK/plain.log"; then
    echo "demo-secure: FAILED: a plaintext client got in" >&2
    exit 1
fi
echo "  a plaintext client (no --server-fingerprint) is refused; client --once says:"
echo "      $(tail -n 1 "$WORK/plain.log")"
[[ ! -e $WORK/plain/hello.txt ]] || { echo "demo-secure: FAILED: the plaintext client got hello.txt" >&2; exit 1; }

echo "  \$ server revoke --root server bob"
"$SERVER" revoke --root "$ROOT" bob | sed 's/^/      /'
wait_for "bob's session closed, bob refused from now on" logged "$WORK/bob.log" "did not admit"
echo "  \$ server clients --root server"
"$SERVER" clients --root "$ROOT" | sed 's/^/      /'

echo "== both folders:"
for who in alice bob; do
    echo "  $who: $(cd "$WORK/$who" && find . -path ./.dropsync -prune -o -type f -print | sort | tr '\n' ' ')"
done
