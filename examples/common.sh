# Shared by the example scripts: where the regions are, the chaos CLI, and a curl that fails loudly.
# Sourced, not run.

US=${US:-http://localhost:7101}   # us-east
EU=${EU:-http://localhost:7102}   # eu-west
AP=${AP:-http://localhost:7103}   # ap-southeast
# The CLI for the chaos commands: `meridian` on PATH unless MERIDIAN says otherwise (a path such as
# .build/release/meridian). `swift run -c release meridian` works too but checks the build first, slowly.
# WAN_ADMIN (host:port) is only needed when the cluster is not the built-in demo.
MERIDIAN=${MERIDIAN:-meridian}
chaos() { $MERIDIAN chaos "$1" ${WAN_ADMIN:+--admin "$WAN_ADMIN"} "${@:2}" >/dev/null; }
cut_all() { chaos partition us-east eu-west; chaos partition us-east ap-southeast; chaos partition eu-west ap-southeast; }

# api CURL_ARGS...: print the answer's body; on an HTTP error print the error JSON and fail.
api() { local body; body=$(curl -sS --fail-with-body "$@") || { echo "$body" >&2; return 1; }; echo "$body"; }
