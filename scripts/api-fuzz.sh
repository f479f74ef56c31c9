#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (from PyPI) against the demo cluster, driven by the OpenAPI document
# the node itself serves at /openapi.yaml. Every check runs but positive_data_acceptance (see RELIABILITY.md:
# schema-valid requests the server rightly refuses by rules OpenAPI cannot express, such as authenticated
# session tokens and If-Match on an absent key). Fails on any 5xx, any answer outside the document (status,
# content type, headers, body schema), any accepted invalid input, or fewer requests than asked.
#
#   scripts/api-fuzz.sh [--examples N] [--min-requests N] [--seed N] [--secure]
#
# --secure runs the demo as `meridian up --secure` starts it (HTTPS, tokens): schemathesis sends the admin
# token, and before it every route of the document is called without a token and must answer 401 with the
# JSON error (every route but /health and /ready, the probes, which answer 200).
#
# MERIDIAN_BINARY picks the binary (default .build/debug/meridian); the cluster uses the demo's ports 7101-7103.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=100 min_requests=1000 seed=1 secure=0
while [ $# -gt 0 ]; do
  case "$1" in
    --examples) examples=$2; shift 2 ;;
    --min-requests) min_requests=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --secure) secure=1; shift ;;
    *) echo "api-fuzz: unknown option $1 (use --examples N, --min-requests N, --seed N, --secure)" >&2; exit 2 ;;
  esac
done
binary=${MERIDIAN_BINARY:-.build/debug/meridian}
[ -x "$binary" ] || { echo "api-fuzz: no binary at $binary; run swift build first" >&2; exit 2; }

if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install --quiet 'schemathesis>=4.3,<5'
fi

. scripts/lib/demo-cluster.sh
status=0
if [ "$secure" -eq 1 ]; then
  start_demo_cluster api-fuzz --latency-scale 0.1 --secure
  scheme=https
  ca="$data/secure/certs/ca.pem"
  curl_tls=(--cacert "$ca")
  st_auth=(-H "Authorization: Bearer $(cat "$data/secure/admin.token")" --tls-verify "$ca")
  # Without a token, every documented route answers 401 with the JSON error, but the probes /health and /ready.
  python3 - "$ca" <<'PY' || status=1
import json, re, ssl, sys, urllib.request, urllib.error
import yaml
context = ssl.create_default_context(cafile=sys.argv[1])
document = yaml.safe_load(open("Sources/MeridianAPI/openapi.yaml"))
checked = 0
for path, operations in document["paths"].items():
    url = "https://127.0.0.1:7101" + re.sub(r"\{[a-z_]+\}", lambda m: {"{keyspace}": "profiles", "{key}": "k", "{id}": "1"}[m.group(0)], path)
    for method in (m for m in operations if m in ("get", "put", "post", "delete", "patch")):
        request = urllib.request.Request(url, method=method.upper(), data=b"{}" if method in ("put", "post") else None)
        try:
            answer = urllib.request.urlopen(request, context=context, timeout=10)
            status, body, challenge = answer.status, answer.read(), None
        except urllib.error.HTTPError as error:
            status, body, challenge = error.code, error.read(), error.headers.get("WWW-Authenticate")
        expected = 200 if path in ("/health", "/ready") else 401
        ok = status == expected and (expected == 200 or (json.loads(body)["error"]["code"] == "unauthenticated" and challenge and challenge.startswith("Bearer")))
        if not ok:
            print(f"api-fuzz: {method.upper()} {path} without a token answered {status} {body[:200]!r}", file=sys.stderr)
            sys.exit(1)
        checked += 1
print(f"api-fuzz: without a token, {checked} operations answered 401 (and /health and /ready 200)")
PY
else
  start_demo_cluster api-fuzz --latency-scale 0.1
  scheme=http
  curl_tls=()
  st_auth=()
fi

# One worker: schemathesis's coverage phase is not thread-safe on every Python (it fails with
# "AST constructor recursion depth mismatch" under two workers on 3.11).
schemathesis run Sources/MeridianAPI/openapi.yaml --url "$scheme://127.0.0.1:7101" "${st_auth[@]}" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$examples" --seed "$seed" --workers 1 --no-color --request-timeout 10 \
  | tee "$data/schemathesis.log" || status=$?

# No region may have died or logged an internal error meanwhile.
for port in 7101 7102 7103; do
  curl -sf "${curl_tls[@]}" "$scheme://localhost:$port/health" >/dev/null || { echo "api-fuzz: the region on :$port stopped answering" >&2; status=1; }
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
