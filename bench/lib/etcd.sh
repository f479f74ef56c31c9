# etcd: three members, one per emulated region, each in a network namespace of its own. etcd members all dial
# one advertised peer URL per member, so a per-link proxy cannot tell who is calling; instead each member has an
# address of its own (10.231.N.2 inside its namespace), advertises a gateway of the WAN emulator in the root
# namespace (10.231.N.1:2380), and the emulator tells the link by the connecting address. Clients in a region
# talk to their own member directly over its veth (no WAN delay), as a client beside it would.
# Plus one single-member etcd on loopback for the one-node throughput comparison.

ETCD_NET=10.231

etcd_up() {
  local admin single_client single_peer
  read -r admin single_client single_peer <<<"$(free_ports 3)"
  local i region ns cluster="" gateways=() sources=() targets=()
  for i in 0 1 2; do
    region=${REGIONS[$i]}
    ns=mpeer$i
    ip netns list | grep -qw "$ns" && die "network namespace $ns exists: another bench/peers run, or a stale one (ip netns del $ns)"
    ip netns add "$ns"
    echo "mpv$i" >"$RUN/netns/$ns"
    ip link add "mpv$i" type veth peer name "mpv${i}n"
    ip link set "mpv${i}n" netns "$ns"
    ip addr add "$ETCD_NET.$((i + 1)).1/24" dev "mpv$i"
    ip link set "mpv$i" up
    ip netns exec "$ns" ip addr add "$ETCD_NET.$((i + 1)).2/24" dev "mpv${i}n"
    ip netns exec "$ns" ip link set "mpv${i}n" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip route add default via "$ETCD_NET.$((i + 1)).1"
    cluster+="${cluster:+,}$region=http://$ETCD_NET.$((i + 1)).1:2380"
    gateways+=(--gateway "$region=$ETCD_NET.$((i + 1)).1:2380")
    sources+=(--source "$ETCD_NET.$((i + 1)).2=$region")
    targets+=("$ETCD_NET.$((i + 1)).2:2380")
  done
  wan_config "$RUN/etcd-wan.yaml" peers-etcd "$admin" "$(free_range 6)" "${targets[@]}"
  start_bg etcd-wan "$MERIDIAN" wan --config "$RUN/etcd-wan.yaml" "${gateways[@]}" "${sources[@]}"
  wait_for 30 "the etcd WAN emulator starting" curl -sf "http://127.0.0.1:$admin/health"

  # Heartbeat and election timeout per etcd's tuning guide for a WAN: heartbeat about the largest RTT (230 ms),
  # election timeout ten heartbeats. Neither is on a write's path.
  for i in 0 1 2; do
    region=${REGIONS[$i]}
    start_bg "etcd-$region" ip netns exec "mpeer$i" etcd --name "$region" --data-dir "$RUN/etcd/$region" \
      --listen-peer-urls "http://$ETCD_NET.$((i + 1)).2:2380" --initial-advertise-peer-urls "http://$ETCD_NET.$((i + 1)).1:2380" \
      --listen-client-urls "http://$ETCD_NET.$((i + 1)).2:2379" --advertise-client-urls "http://$ETCD_NET.$((i + 1)).2:2379" \
      --initial-cluster "$cluster" --initial-cluster-token meridian-peers --initial-cluster-state new \
      --heartbeat-interval 250 --election-timeout 2500
  done
  start_bg etcd-single etcd --name single --data-dir "$RUN/etcd/single" \
    --listen-peer-urls "http://127.0.0.1:$single_peer" --initial-advertise-peer-urls "http://127.0.0.1:$single_peer" \
    --listen-client-urls "http://127.0.0.1:$single_client" --advertise-client-urls "http://127.0.0.1:$single_client" \
    --initial-cluster "single=http://127.0.0.1:$single_peer"
  ETCD_ENDPOINTS="http://$ETCD_NET.1.2:2379,http://$ETCD_NET.2.2:2379,http://$ETCD_NET.3.2:2379"
  wait_for 60 "the three etcd members healthy" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
  wait_for 60 "the single etcd member healthy" env ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$single_client" endpoint health

  # Put etcd's leader where Meridian's single-leader keyspace leads (us-east), so both pay the same forward.
  local status leader us
  status=$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json)
  read -r leader us <<<"$(python3 -c '
import json, sys
rows = json.loads(sys.argv[1])
leader = rows[0]["Status"]["leader"]
us = [r for r in rows if "'$ETCD_NET'.1.2" in r["Endpoint"]][0]["Status"]["header"]["member_id"]
print("%x %x" % (leader, us))' "$status")"
  if [ "$leader" != "$us" ]; then
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" move-leader "$us" >>"$RUN/etcd-move-leader.log" 2>&1 \
      || die "etcd move-leader to us-east failed (see $RUN/etcd-move-leader.log)"
  fi
  ETCD_TARGETS=$(cat <<JSON
  "etcd": {
    "leader": "us-east",
    "clients": { "us-east": "$ETCD_NET.1.2:2379", "eu-west": "$ETCD_NET.2.2:2379", "ap-southeast": "$ETCD_NET.3.2:2379" },
    "single": "127.0.0.1:$single_client",
    "version": "$(etcd --version | head -1 | awk '{print $3}')"
  },
JSON
)
  say "etcd: 3 members behind the WAN (leader us-east) and 1 single member up"
}
