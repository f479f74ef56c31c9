#!/usr/bin/env bash
# The shopping cart of Amazon's Dynamo paper: an "add to cart" must never be lost, even when two regions
# take writes for the same cart while they cannot reach each other. Meridian keeps every addition two ways:
#   A. a CRDT: the cart is an OR-set in the `likes` keyspace (conflict policy crdt); an add concurrent
#      with a remove wins, so no addition disappears and the merge needs no application code;
#   B. siblings, as in Dynamo and Riak: the `carts` keyspace keeps both concurrent versions, a read
#      answers 300 with all of them, and the application merges them and writes back with the context.
#
# Run it against `meridian up` (the demo cluster); see examples/README.md.
set -euo pipefail

# US, EU, AP, MERIDIAN, WAN_ADMIN and the helpers chaos, cut_all and api: see common.sh.
source "$(dirname "$0")/common.sh"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }   # json EXPR: EXPR of the JSON d
# eventually DESCRIPTION COMMAND...: retry COMMAND until it succeeds (at most 10 s).
eventually() {
  for _ in $(seq 100); do "${@:2}" 2>/dev/null && return 0; sleep 0.1; done
  echo "Gave up waiting: $1" >&2; exit 1
}

curl -sSf "$US/health" >/dev/null || { echo "No region at $US: start one with 'meridian up'." >&2; exit 1; }
chaos status || { echo "'$MERIDIAN chaos status' failed: MERIDIAN names the CLI, WAN_ADMIN the WAN admin API." >&2; exit 1; }
HEADERS=$(mktemp)
trap 'chaos heal || true; rm -f "$HEADERS"' EXIT   # whatever happens, leave the network healed
RUN=$(date +%s)-$$   # fresh keys each run

echo "A. The cart as an OR-set in 'likes' (key cart:alice-$RUN)"
SET=/v1/crdt/likes/cart:alice-$RUN
# op LABEL URL OPERATION: apply a CRDT operation in that region; print the cart it leaves there.
op() { local body; body=$(api -X POST "$2$SET" -d "$3"); echo "   $1 $(json 'json.dumps(d["value"])' <<<"$body")"; }
items() { local body; body=$(api "$1$SET"); json 'json.dumps(d["value"])' <<<"$body"; }   # items URL
shows() { [ "$(items "$1")" = "$2" ]; }   # shows URL JSON: that region's cart is JSON

op "us-east adds book and pen:   " "$US" '{"type":"or-set","op":"add","elements":["book","pen"]}'
eventually "eu-west has both items" shows "$EU" '["book", "pen"]'
cut_all; echo "   (every link cut)"
op "eu-west removes book and pen:" "$EU" '{"type":"or-set","op":"remove","elements":["book","pen"]}'
op "us-east adds book once more: " "$US" '{"type":"or-set","op":"add","element":"book"}'
chaos heal
echo "   (healed) the remove never saw that add, so book stays; pen, only removed, is gone:"
for url in "$US" "$EU" "$AP"; do eventually "$url converges" shows "$url" '["book"]'; done
echo "   us-east $(items "$US")   eu-west $(items "$EU")   ap-southeast $(items "$AP")"

echo
echo "B. The cart as siblings in 'carts' (key alice-$RUN, a JSON list of items)"
CART=/v1/kv/carts/alice-$RUN
# get URL: read the cart there into STATUS, BODY and CONTEXT (the Meridian-Context header: what it saw).
get() {
  BODY=$(curl -sS -D "$HEADERS" "$1$CART")
  STATUS=$(awk 'NR == 1 {print $2}' "$HEADERS")
  CONTEXT=$(awk 'tolower($1) == "meridian-context:" {print $2}' "$HEADERS" | tr -d '\r')
}
# put URL JSON [CONTEXT]: write the cart there. With the context of a read it replaces exactly the
# versions that read saw; without one it is a blind write, kept as one more sibling.
put() { api -X PUT "$1$CART" -H 'Content-Type: application/json' ${3:+-H "Meridian-Context: $3"} -d "$2" >/dev/null; }
is() { get "$1"; [ "$STATUS" = 200 ] && [ "$BODY" = "$2" ]; }   # is URL JSON: one version, that JSON
two_siblings() { get "$1"; [ "$STATUS" = 300 ] && [ "$(json 'len(d["siblings"])' <<<"$BODY")" = 2 ]; }

put "$US" '["book"]'; echo '   us-east writes ["book"]'
eventually "eu-west has the cart" is "$EU" '["book"]'
cut_all; echo "   (every link cut) each region reads the cart, adds an item, writes back with the read's context:"
get "$US"; put "$US" '["book", "pen"]' "$CONTEXT";  echo '   us-east writes ["book", "pen"]'
get "$EU"; put "$EU" '["book", "lamp"]' "$CONTEXT"; echo '   eu-west writes ["book", "lamp"]'
chaos heal
echo "   (healed) neither write saw the other, so a read answers 300 with both:"
eventually "us-east has two siblings" two_siblings "$US"
json '"\n".join("     %s from %s: %s" % (s["version"], s["region"], s["value"]) for s in d["siblings"])' <<<"$BODY"
# The application's merge: the union of the items (the Dynamo paper's cart merge).
MERGED=$(json 'json.dumps(sorted(set().union(*(json.loads(s["value"]) for s in d["siblings"]))))' <<<"$BODY")
put "$US" "$MERGED" "$CONTEXT"
echo "   us-east writes the union $MERGED with that read's context; it replaces both siblings:"
for region in "us-east $US" "eu-west $EU" "ap-southeast $AP"; do
  url=${region#* }
  eventually "${region% *} has the merged cart" is "$url" "$MERGED"
  echo "   ${region% *}: $STATUS $BODY"
done
