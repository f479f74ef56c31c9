#!/usr/bin/env bash
# Runs the README's first walk-through exactly as written: start the demo cluster with `meridian up`,
# write with curl, read it back with curl, then stop the cluster and check that no region process is left.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${MERIDIAN_BINARY:-.build/debug/meridian}
. scripts/lib/demo-cluster.sh
start_demo_cluster readme-smoke

# The two commands from the README, verbatim.
curl -sf -X PUT localhost:7101/v1/kv/profiles/k -d v >/dev/null
got=$(curl -sf localhost:7101/v1/kv/profiles/k)
[ "$got" = "v" ] || { echo "readme-smoke: expected 'v', got '$got'"; exit 1; }

kill -TERM "$up"
wait "$up"
trap - EXIT
sleep 0.5
if pgrep -f "meridian node --config $data" >/dev/null; then
  echo "readme-smoke: region processes outlived meridian up"; pgrep -af "meridian node"; exit 1
fi
rm -rf "$data"
echo "readme-smoke: 1 passed, 0 failed"
