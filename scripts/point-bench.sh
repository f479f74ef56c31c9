#!/usr/bin/env bash
# Point GET and durable PUT of one node, driven by wrk (a C load generator, so the generator's own CPU stays small),
# for one or more builds of `meridian` in one run, alternating them round by round so every build sees the same
# load on the host:
#
#   scripts/point-bench.sh [--rounds N] [--seconds S] [--connections C] [--threads T] NAME=BINARY [NAME=BINARY...]
#
# Each round starts a fresh one-region node per build (keyspace `bench`: multi-leader, LWW, async ack, so a PUT is
# answered after its group commit's fsync), preloads 10,000 keys of 100 bytes, then runs wrk GET and wrk PUT for S
# seconds each. Besides wrk's throughput and p50, it reads the node's CPU time from /proc before and after each
# phase: CPU µs per request is what the machine's noise blurs least. Needs wrk (apt-get install -y wrk).
set -euo pipefail
rounds=3 seconds=5 connections=32 threads=1
builds=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *=*) builds+=("$1"); shift ;;
    *) echo "point-bench: unknown argument $1 (use --rounds N, --seconds S, --connections C, --threads T, NAME=BINARY)" >&2; exit 2 ;;
  esac
done
[ ${#builds[@]} -gt 0 ] || { echo "point-bench: name at least one build as NAME=BINARY" >&2; exit 2; }
command -v wrk >/dev/null || { echo "point-bench: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }
ticks=$(getconf CLK_TCK)
work=$(mktemp -d)
node_pid=
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# shellcheck source=lib/wrk-scripts.sh
source "$(dirname "$0")/lib/wrk-scripts.sh"
write_wrk_scripts "$work" 10000

# phase NAME BUILD SCRIPT: runs wrk against the node, prints one row.
phase() {
  local name=$1 build=$2 script=$3 port=$4
  local before after output requests
  before=$(cpu_ticks "$node_pid")
  output=$(wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s "$script" "http://127.0.0.1:$port")
  after=$(cpu_ticks "$node_pid")
  if grep -q "Non-2xx" <<<"$output"; then echo "point-bench: $build $name: $(grep Non-2xx <<<"$output")" >&2; exit 1; fi
  requests=$(awk '/requests in/ { print $1 }' <<<"$output")
  awk -v build="$build" -v name="$name" -v requests="$requests" -v cpu=$((after - before)) -v ticks="$ticks" \
      -v rate="$(awk '/Requests\/sec/ { print $2 }' <<<"$output")" -v p50="$(awk '$1 == "50%" { print $2 }' <<<"$output")" \
      'BEGIN { printf "%-12s %-5s %12.0f %10s %14.1f\n", build, name, rate, p50, cpu * 1e6 / ticks / requests }'
}

printf '%-12s %-5s %12s %10s %14s\n' BUILD PHASE REQUESTS/s P50 CPU_US/REQ
for round in $(seq 1 "$rounds"); do
  for build in "${builds[@]}"; do
    name=${build%%=*} binary=${build#*=}
    port=$(free_port) peer=$(free_port)
    rm -rf "$work/node" && mkdir -p "$work/node"
    cat > "$work/node/cluster.yaml" <<YAML
cluster: bench
regions:
  - { name: local, client: 127.0.0.1:$port, peer: 127.0.0.1:$peer }
keyspaces:
  - { name: bench, topology: multi-leader, conflict: lww, ack: async }
YAML
    "$binary" node --config "$work/node/cluster.yaml" --region local --data "$work/node/data" --log-level warning \
      > "$work/node/node.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 1 200); do
      curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "point-bench: $name did not start; its log:" >&2; cat "$work/node/node.log" >&2; exit 1; }
    # Every key written once (in order), so the GETs find them.
    wrk -t1 -c"$connections" -d4s -s "$work/put.lua" "http://127.0.0.1:$port" >/dev/null
    phase GET "$name" "$work/get.lua" "$port"
    phase PUT "$name" "$work/put.lua" "$port"
    kill "$node_pid" && wait "$node_pid" 2>/dev/null || true
    node_pid=
  done
done
