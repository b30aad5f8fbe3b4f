#!/usr/bin/env bash
# RFC 6455 conformance of the gateway's real reader/writer path, measured by the Autobahn
# TestSuite (fuzzingclient) against the diagnostics echo endpoint (`--enable-echo`).
#
#   scripts/conformance.sh [OUTDIR]        (default OUTDIR: .conformance)
#
# Runs every case except permessage-deflate (12.*, 13.*: we negotiate no extensions), with
# the message-size limit raised to 16 MiB + 1 KiB for the 9.* large-message cases. Installs
# the suite through shared/tools/autobahn/install.sh when it is missing (needs root) and
# fails loudly when it cannot. Exit status: 0 when no case FAILED.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${AUTOBAHN_TOOLS:-../shared/tools/autobahn}
OUT=${1:-.conformance}
PYTHON=${PYTHON:-.venv/bin/python}
WSTEST=${WSTEST:-/opt/autobahn-testsuite/py2/bin/wstest}

if [ ! -f "$TOOLS/run.sh" ]; then
    echo "conformance: $TOOLS/run.sh not found (shared/ must sit beside this checkout)" >&2
    exit 2
fi
if [ ! -x "$WSTEST" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "conformance: wstest is not installed and installing it needs root:" \
             "run $TOOLS/install.sh as root" >&2
        exit 2
    fi
    echo "conformance: installing the Autobahn TestSuite" >&2
    bash "$TOOLS/install.sh" >&2
fi

mkdir -p "$OUT"
key="conformance-$(date +%s)-$$"
# Limits raised to what the suite sends: 16 MiB messages (9.1/9.2), in frames of 64 bytes
# at the smallest (9.3-9.6: up to 262,144 fragments a message).
"$PYTHON" -m trio_gateway serve --host 127.0.0.1 --port 0 --api-key "$key" --enable-echo \
    --max-message-size $((16 * 1024 * 1024 + 1024)) --max-fragments $((16 * 1024 * 1024 / 64)) \
    --queue-depth 4096 --log-level warning 2> "$OUT/server.log" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

port=""
for _ in $(seq 100); do
    port=$(sed -n 's|^trio-gateway listening on ws://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' \
        "$OUT/server.log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 2; }
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "conformance: the gateway did not report its port; log in $OUT/server.log" >&2
    exit 2
fi

status=0
AUTOBAHN_AGENT=trio-gateway AUTOBAHN_EXCLUDE="12.* 13.*" WSTEST="$WSTEST" \
    bash "$TOOLS/run.sh" 127.0.0.1 "$port" "$OUT" "/api/echo?token=$key" \
    | tee "$OUT/summary.txt" || status=$?
if ! kill -0 "$server" 2>/dev/null; then
    echo "conformance: the gateway died during the run; log in $OUT/server.log" >&2
    status=1
fi
# One closing line in the plain "N passed, N failed" form (passed: OK, non-strict and
# informational verdicts), so CI logs end with a count of what ran.
counts=$(sed -n 's/^autobahn: \([0-9]*\) ok, \([0-9]*\) non-strict, \([0-9]*\) informational, \([0-9]*\) failed of [0-9]*$/\1 \2 \3 \4/p' \
    "$OUT/summary.txt")
if [ -n "$counts" ]; then
    read -r ok nonstrict informational failed <<< "$counts"
    echo "conformance: $((ok + nonstrict + informational)) passed, $failed failed"
else
    echo "conformance: no result line from run.sh" >&2
    [ "$status" -ne 0 ] || status=2
fi
exit "$status"
