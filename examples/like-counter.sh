#!/usr/bin/env bash
# A like counter that loses no like: a G-Counter in the `likes` keyspace (multi-leader, conflict policy
# crdt) takes likes in all three regions, also while every link between them is cut. Each region counts
# its own increments and a merge keeps the highest count seen from each region, so after the heal every
# region shows the exact total. (Under last-writer-wins, two regions writing "count + 1" at once lose one.)
#
# Run it against `meridian up` (the demo cluster); see examples/README.md.
set -euo pipefail

# US, EU, AP, MERIDIAN, WAN_ADMIN and the helpers chaos, cut_all and api: see common.sh.
source "$(dirname "$0")/common.sh"


POST=/v1/crdt/likes/post:$(date +%s)-$$   # a new post each run, so its count starts at zero

# like URL: one like in that region. A G-Counter only grows; "by": N would add N at once.
like() { api -X POST "$1$POST" -d '{"type":"g-counter","op":"increment"}' >/dev/null; }
likes() { for _ in $(seq "$2"); do like "$1"; done; }   # likes URL N
# count URL: the count as that region sees it now (a local read, no waiting for other regions).
count() {
  local body; body=$(api "$1$POST")
  python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])' <<<"$body"
}
# wait_count URL N: poll that region until it counts N (at most 10 s).
wait_count() {
  for _ in $(seq 100); do [ "$(count "$1")" -eq "$2" ] && return 0; sleep 0.1; done
  echo "$1 still counts $(count "$1"), not $2." >&2; exit 1
}
show() { echo "     us-east $(count "$US")   eu-west $(count "$EU")   ap-southeast $(count "$AP")"; }

curl -sSf "$US/health" >/dev/null || { echo "No region at $US: start one with 'meridian up'." >&2; exit 1; }
chaos status || { echo "'$MERIDIAN chaos status' failed: MERIDIAN names the CLI, WAN_ADMIN the WAN admin API." >&2; exit 1; }
trap 'chaos heal || true' EXIT   # whatever happens below, leave the network healed

echo "1. Connected: one like in each region for ${POST##*/}."
likes "$US" 1; likes "$EU" 1; likes "$AP" 1
for url in "$US" "$EU" "$AP"; do wait_count "$url" 3; done   # replication is asynchronous
show

echo "2. Cut every link: each region is on its own."
cut_all

echo "3. While partitioned: 5 likes in us-east, 3 in eu-west, 4 in ap-southeast."
likes "$US" 5; likes "$EU" 3; likes "$AP" 4
echo "   Each region sees the 3 likes from before and its own new ones:"
show

echo "4. Heal, and wait until every region counts all 15 likes."
chaos heal
for url in "$US" "$EU" "$AP"; do wait_count "$url" 15; done
show
echo "   Every region counts 15: no like was lost."
