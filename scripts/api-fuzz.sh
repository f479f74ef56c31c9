#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (from PyPI) against the demo cluster, driven by the OpenAPI document
# the node itself serves at /openapi.yaml. Every check runs but positive_data_acceptance (see RELIABILITY.md:
# schema-valid requests the server rightly refuses by rules OpenAPI cannot express, such as authenticated
# session tokens and If-Match on an absent key). Fails on any 5xx, any answer outside the document (status,
# content type, headers, body schema), any accepted invalid input, or fewer requests than asked.
#
#   scripts/api-fuzz.sh [--examples N] [--min-requests N] [--seed N]
#
# MERIDIAN_BINARY picks the binary (default .build/debug/meridian); the cluster uses the demo's ports 7101-7103.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=100 min_requests=1000 seed=1
while [ $# -gt 0 ]; do
  case "$1" in
    --examples) examples=$2; shift 2 ;;
    --min-requests) min_requests=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "api-fuzz: unknown option $1 (use --examples N, --min-requests N, --seed N)" >&2; exit 2 ;;
  esac
done
binary=${MERIDIAN_BINARY:-.build/debug/meridian}
[ -x "$binary" ] || { echo "api-fuzz: no binary at $binary; run swift build first" >&2; exit 2; }

if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install --quiet 'schemathesis>=4.3,<5'
fi

. scripts/lib/demo-cluster.sh
start_demo_cluster api-fuzz --latency-scale 0.1

# One worker: schemathesis's coverage phase is not thread-safe on every Python (it fails with
# "AST constructor recursion depth mismatch" under two workers on 3.11).
status=0
schemathesis run http://127.0.0.1:7101/openapi.yaml --url http://127.0.0.1:7101 \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$examples" --seed "$seed" --workers 1 --no-color --request-timeout 10 \
  | tee "$data/schemathesis.log" || status=$?

# No region may have died or logged an internal error meanwhile.
for port in 7101 7102 7103; do
  curl -sf "localhost:$port/health" >/dev/null || { echo "api-fuzz: the region on :$port stopped answering" >&2; status=1; }
done
if grep -q '"internal_error"\|request failed' "$data"/*.log 2>/dev/null; then
  echo "api-fuzz: a region logged an internal error:" >&2
  grep -h '"internal_error"\|request failed' "$data"/*.log | head -20 >&2
  status=1
fi
generated=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$data/schemathesis.log" | tail -1)
if [ -z "$generated" ] || [ "$generated" -lt "$min_requests" ]; then
  echo "api-fuzz: schemathesis generated ${generated:-no} requests; at least $min_requests were asked for" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "api-fuzz: $generated requests, 0 failures"
exit "$status"
