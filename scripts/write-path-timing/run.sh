#!/usr/bin/env bash
# Where a `majority` write's time goes, stage by stage: builds this checkout with the instrumentation in
# instrumentation.patch (in a scratch worktree; the checkout itself is untouched), starts the demo cluster at real
# WAN scale, sends sequential PUTs to the `majority` keyspace `inventory` at us-east, and prints the p50 of each
# stage's duration (origin: route, group commit, shipping; replica: apply, fsync, ack; each WAN leg).
#
#   scripts/write-path-timing/run.sh
#
# Uses the demo's fixed ports (7100-7320).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
cleanup() {
  pkill -f "$work/data/cluster.yaml" 2>/dev/null || true
  git -C "$repo" worktree remove --force "$work/tree" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
git -C "$repo" worktree add --detach "$work/tree" HEAD >/dev/null
git -C "$work/tree" apply "$here/instrumentation.patch"
(cd "$work/tree" && swift build -c release --product meridian >/dev/null)
binary="$work/tree/.build/release/meridian"
MERIDIAN_TIMING=1 "$binary" up --data "$work/data" > "$work/up.log" 2>&1 &
for _ in $(seq 1 120); do
  curl -sf -o /dev/null http://127.0.0.1:7101/health && curl -sf -o /dev/null http://127.0.0.1:7103/health && break
  sleep 0.5
done
sleep 4
for i in $(seq 1 40); do curl -s -o /dev/null -X PUT --data-binary "v$i" "http://127.0.0.1:7101/v1/kv/inventory/k$i"; done
pkill -f "$work/data/cluster.yaml"
sleep 1
python3 "$here/analyze.py" "$work/data"
