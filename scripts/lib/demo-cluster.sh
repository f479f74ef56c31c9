# Sourced by the scripts that need the demo cluster running: `start_demo_cluster NAME [meridian up options]`
# starts `$binary up` in a new temporary directory ($data; its log is $data/up.log, its pid $up), stops it
# and removes the directory on exit, and returns once `meridian up` says the cluster is up (every region
# answering, clocks verified), as a newcomer would wait. NAME prefixes the error if it exits first.
start_demo_cluster() {
  local name=$1
  shift
  data=$(mktemp -d)
  "$binary" up --data "$data" "$@" >"$data/up.log" 2>&1 &
  up=$!
  trap stop_demo_cluster EXIT
  for _ in $(seq 1 900); do
    grep -q "is up:" "$data/up.log" 2>/dev/null && return 0
    kill -0 "$up" 2>/dev/null || { cat "$data/up.log"; echo "$name: meridian up exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name: meridian up did not say the cluster is up within 90 s" >&2
  exit 1
}

stop_demo_cluster() {
  kill -TERM "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  rm -rf "$data"
}
