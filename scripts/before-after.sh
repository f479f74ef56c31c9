#!/usr/bin/env bash
# Measures a change against an earlier revision in one run on this machine, alternating the two release
# builds so both see the same load on the host:
#
#   scripts/before-after.sh [--before REV] [--nemesis-seconds N] [--out DIR]
#
# For each build, in turn: `bench local`, `bench replication`, `bench consistency`, a five-round game day
# against its own demo cluster (RTO, writes lost), then the nemesis for N seconds (default 300) with seeds 1
# and 2. Every run's output goes to DIR/<step>.<before|after>.log; a summary of the lines that carry the
# figures is printed at the end. Builds REV in a temporary git worktree (a from-scratch release build, about
# 8 minutes) and the working tree with `swift build -c release`. Leave the machine otherwise idle.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
before=1ef70a5 nemesis_seconds=300 out=$(mktemp -d)
while [ $# -gt 0 ]; do
  case $1 in
    --before) before=$2; shift 2 ;;
    --nemesis-seconds) nemesis_seconds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "before-after: unknown option $1 (use --before REV, --nemesis-seconds N, --out DIR)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
worktree=$(mktemp -d)
cleanup() {
  git -C "$here" worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"
}
trap cleanup EXIT

echo "== building $before in $worktree" >&2
git -C "$here" worktree add --detach "$worktree" "$before" >/dev/null
(cd "$worktree" && swift build -c release --product meridian >"$out/build.before.log" 2>&1)
echo "== building the working tree" >&2
(cd "$here" && swift build -c release --product meridian >"$out/build.after.log" 2>&1)
declare -A binaries=([before]="$worktree/.build/release/meridian" [after]="$here/.build/release/meridian")

# shellcheck source=lib/demo-cluster.sh
source "$here/scripts/lib/demo-cluster.sh"

gameday() {
  local which=$1
  binary=${binaries[$which]}
  start_demo_cluster "gameday ($which)"
  trap 'stop_demo_cluster; cleanup' EXIT
  # From the cluster's directory: the game day writes the restarted region's log beside where it runs.
  (cd "$data" && "$binary" gameday --rounds 5) >"$out/gameday.$which.log" 2>&1 || echo "gameday ($which) exited $?" >>"$out/gameday.$which.log"
  stop_demo_cluster
  trap cleanup EXIT
}

run() {
  local step=$1 which=$2
  shift 2
  echo "== $step ($which)" >&2
  (cd "$(mktemp -d)" && "${binaries[$which]}" "$@" >"$out/$step.$which.log" 2>&1) || echo "$step ($which) exited $?" >>"$out/$step.$which.log"
}

for which in before after; do run bench-local "$which" bench local; done
for which in before after; do run bench-replication "$which" bench replication; done
for which in before after; do run bench-consistency "$which" bench consistency; done
for which in before after; do echo "== gameday ($which)" >&2; gameday "$which"; done
for seed in 1 2; do
  for which in before after; do run "nemesis-seed$seed" "$which" nemesis --duration "$nemesis_seconds" --seed "$seed"; done
done

echo "results in $out"
for log in "$out"/*.log; do
  case $log in */build.*) continue ;; esac
  echo "---- $(basename "$log")"
  grep -E "p50|p99|RTO|RPO|lost|violation|passed|PASS|FAIL|ops/s|writes/s|exited" "$log" | head -40 || true
done
