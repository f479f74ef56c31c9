#!/usr/bin/env bash
# CPU per write when writes come one at a time: the demo cluster (`meridian up`, WAN delays scaled to near zero),
# one wrk connection writing 100-byte values to one keyspace at us-east (the `majority` keyspace `inventory` unless
# KEYSPACE names another, such as the `async` `profiles`), and each process's CPU time from /proc over the run.
#
#   [KEYSPACE=NAME] scripts/low-load-cpu.sh BINARY [SECONDS]
#
# Prints writes/s, the p50 latency and the CPU milliseconds per write of the WAN emulator and each region. It uses
# the demo's fixed ports (7100-7320), so nothing else may hold them; it stops everything it started. Needs wrk.
set -euo pipefail
binary=${1:?usage: scripts/low-load-cpu.sh BINARY [SECONDS]}
seconds=${2:-6}
keyspace=${KEYSPACE:-inventory}
command -v wrk >/dev/null || { echo "low-load-cpu: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
work=$(mktemp -d)
cluster=""
cleanup() {
  [ -n "$cluster" ] && kill "$cluster" 2>/dev/null && wait "$cluster" 2>/dev/null
  pkill -f "$work/data/cluster.yaml" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/put.lua" <<LUA
local n = -1
local value = string.rep("v", 100)
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/$keyspace/k" .. (n % 1000), {["Content-Type"] = "application/octet-stream"}, value)
end
LUA
"$binary" up --data "$work/data" --latency-scale 0.001 > "$work/up.log" 2>&1 &
cluster=$!
for _ in $(seq 1 120); do
  curl -sf -o /dev/null http://127.0.0.1:7101/health && curl -sf -o /dev/null http://127.0.0.1:7103/health && break
  sleep 0.5
done
curl -sf -o /dev/null http://127.0.0.1:7101/health || { echo "low-load-cpu: the cluster did not come up; see $work/up.log" >&2; cat "$work/up.log" >&2; exit 1; }
sleep 3
wrk -c1 -t1 -d2 -s "$work/put.lua" http://127.0.0.1:7101 > /dev/null 2>&1
mapfile -t pids < <(pgrep -f "$work/data/cluster.yaml")
declare -A before
for pid in "${pids[@]}"; do before[$pid]=$(awk '{print $14 + $15}' "/proc/$pid/stat"); done
out=$(wrk -c1 -t1 -d"$seconds" -s "$work/put.lua" --latency http://127.0.0.1:7101 2>&1)
rate=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
p50=$(awk '/ 50%/ {print $2}' <<< "$out")
line="writes/s $rate p50 $p50 CPU ms per write:"
ticks=$(getconf CLK_TCK)
for pid in "${pids[@]}"; do
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  role=$(tr '\0' ' ' < "/proc/$pid/cmdline" | grep -oE "region [a-z-]+|wan|gateway" | head -1 | sed 's/region //')
  line="$line $role=$(awk -v d=$((after - before[$pid])) -v r="$rate" -v s="$seconds" -v t="$ticks" 'BEGIN {printf "%.2f", d * 1000 / t / (r * s)}')"
done
echo "$line"
