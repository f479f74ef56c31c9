# Redis replication: the master in us-east, a replica in eu-west and ap-southeast replicating through the WAN
# emulator's link from its region to us-east (replicas report keyspace events, which the lag phase reads).
# Plus one standalone Redis for the one-node throughput comparison.

redis_linked() { redis-cli -p "$1" info replication | grep -q 'master_link_status:up'; }

redis_up() {
  local admin p0 p1 p2 single
  read -r admin p0 p1 p2 single <<<"$(free_ports 5)"
  local ports=("$p0" "$p1" "$p2")
  wan_config "$RUN/redis-wan.yaml" peers-redis "$admin" "$(free_range 6)" "127.0.0.1:$p0" "127.0.0.1:$p1" "127.0.0.1:$p2"
  start_bg redis-wan "$MERIDIAN" wan --config "$RUN/redis-wan.yaml"
  wait_for 30 "the Redis WAN emulator starting" curl -sf "http://127.0.0.1:$admin/health"
  local i region args link
  for i in 0 1 2 3; do
    region=${REGIONS[$i]:-single}
    mkdir -p "$RUN/redis/$region"
    args=(--bind 127.0.0.1 --protected-mode no --save "" --appendonly no --dir "$RUN/redis/$region")
    if [ "$i" = 3 ]; then
      args+=(--port "$single")
    else
      args+=(--port "${ports[$i]}")
    fi
    if [ "$i" = 1 ] || [ "$i" = 2 ]; then
      link=$(wan_listen "$admin" "$region" us-east)
      args+=(--replicaof 127.0.0.1 "${link##*:}" --notify-keyspace-events 'K$')
    fi
    start_bg "redis-$region" redis-server "${args[@]}"
  done
  wait_for 60 "the eu-west Redis replica linked" redis_linked "$p1"
  wait_for 60 "the ap-southeast Redis replica linked" redis_linked "$p2"
  REDIS_TARGETS=$(cat <<JSON
  "redis": {
    "primary": "127.0.0.1:$p0",
    "replicas": { "eu-west": "127.0.0.1:$p1", "ap-southeast": "127.0.0.1:$p2" },
    "single": "127.0.0.1:$single",
    "version": "$(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/')"
  },
JSON
)
  say "redis: master us-east, replicas eu-west and ap-southeast linked through the WAN, plus a standalone"
}
