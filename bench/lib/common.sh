# Shared by bench/peers: ports, waiting, process bookkeeping, the WAN emulator and clean-up.
# Everything started is recorded under $RUN (pid files, PostgreSQL data directories, network namespaces), and
# `cleanup` stops exactly that, on success, failure or Ctrl-C.

REGIONS=(us-east eu-west ap-southeast)

say() { printf '%s\n' "$*" >&2; }
die() { say "bench/peers: $*"; exit 1; }

# N free loopback ports, each bound by the kernel and released (a port can still be taken before use; the
# servers then fail to start and the run stops with their log).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# The first of N consecutive free ports (the WAN emulator's per-link proxies sit on base_port + index).
free_range() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(500):
    base = random.randint(20000, 60000 - n)
    held = []
    try:
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); held.append(s)
    except OSError:
        continue
    finally:
        for s in held: s.close()
    print(base); sys.exit(0)
sys.exit("no free port range")
PY
}

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not happen within ${seconds} s (logs: $RUN/*.log)"
    sleep 0.2
  done
}

# start_bg NAME COMMAND...: starts COMMAND in the background, logging to $RUN/NAME.log, and records its pid.
start_bg() {
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name"
}

# The demo cluster's RTT lines, so every system crosses the same emulated WAN.
rtt_lines() { "$MERIDIAN" config demo | grep -E '^\s+- \{ between:'; }

# wan_config FILE NAME ADMIN_PORT BASE_PORT TARGET...: a cluster file for `meridian wan` whose regions' peer
# addresses are the given targets (host:port, one per region in REGIONS order).
wan_config() {
  local file=$1 name=$2 admin=$3 base=$4; shift 4
  {
    echo "cluster: $name"
    echo "wan:"
    echo "  admin: 127.0.0.1:$admin"
    echo "  base_port: $base"
    echo "  latency_scale: 1.0"
    echo "  rtt_ms:"
    rtt_lines
    echo "regions:"
    local i=0 target
    for target in "$@"; do
      echo "  - { name: ${REGIONS[$i]}, client: 127.0.0.1:$(free_ports 1), peer: $target }"
      i=$((i + 1))
    done
  } >"$file"
}

# wan_listen ADMIN_PORT FROM TO: where the WAN emulator's proxy for link FROM->TO listens.
wan_listen() {
  curl -sf "http://127.0.0.1:$1/v1/wan/status" | python3 -c '
import json, sys
for link in json.load(sys.stdin)["links"]:
    if link["from"] == sys.argv[1] and link["to"] == sys.argv[2]: print(link["listen"])' "$2" "$3"
}

# Stops everything recorded under $RUN: servers by pid (TERM, then KILL after 10 s), PostgreSQL clusters by
# pg_ctl, network namespaces and their links; then removes $RUN unless KEEP is set.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e  # stop everything, whatever fails along the way
  [ -n "${RUN:-}" ] && [ -d "$RUN" ] || exit $status
  say "bench/peers: stopping everything it started"
  local dir
  for dir in "$RUN"/pg/*/; do
    [ -f "$dir/postmaster.pid" ] && runuser -u postgres -- pg_ctl -D "$dir" -m immediate stop >/dev/null 2>&1
  done
  local file pid
  for file in "$RUN"/pids/*; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null
  done
  local deadline=$((SECONDS + 10))
  for file in "$RUN"/pids/*; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for file in "$RUN"/netns/*; do
    [ -f "$file" ] || continue
    ip netns pids "$(basename "$file")" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    ip netns del "$(basename "$file")" 2>/dev/null
    ip link del "$(cat "$file")" 2>/dev/null
  done
  if [ -z "${KEEP:-}" ]; then rm -rf "$RUN"; else say "bench/peers: kept $RUN"; fi
  exit $status
}
