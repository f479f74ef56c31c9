#!/usr/bin/env bash
# Runs PowerDNS (Debian's pdns-server with pdns-backend-remote) in the foreground, answering the names of a
# Meridian cluster's `routing.dns` section through the gateway's remote-backend API.
#
#   deploy/powerdns/run.sh --gateway 127.0.0.1:7100 --port 5353 [--address 127.0.0.1] [--dir DIR]
#
# Then: dig @127.0.0.1 -p 5353 api.geo.meridian.test A +subnet=198.51.100.0/24
#
# The settings that matter: EDNS Client Subnet processing on (the gateway answers per client subnet, with a scope
# mask); PowerDNS's own caches off (the gateway answers from memory, and a changed answer must show at once);
# no zone cache (PowerDNS then starts before the gateway and asks it on the first query). Stops on SIGTERM/SIGINT.
set -euo pipefail

gateway=127.0.0.1:7100
port=5353
address=127.0.0.1
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway) gateway="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --address) address="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v pdns_server >/dev/null 2>&1; then
  echo "run.sh: pdns_server is not installed: apt-get install -y --no-install-recommends pdns-server pdns-backend-remote" >&2
  exit 1
fi
case "$port" in ''|*[!0-9]*) echo "run.sh: --port must be a number" >&2; exit 2 ;; esac

own_dir=""
if [ -z "$dir" ]; then
  dir=$(mktemp -d /tmp/meridian-pdns.XXXXXX)
  own_dir=yes
fi
mkdir -p "$dir"
cat > "$dir/pdns.conf" <<CONF
launch=remote
remote-connection-string=http:url=http://$gateway/dnsapi,timeout=2000
local-address=$address
local-port=$port
daemon=no
guardian=no
write-pid=no
socket-dir=$dir
disable-syslog=yes
log-timestamp=yes
loglevel=4
security-poll-suffix=
edns-subnet-processing=yes
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
zone-cache-refresh-interval=0
CONF

echo "run.sh: PowerDNS on $address:$port (udp and tcp), asking the gateway at http://$gateway/dnsapi; config in $dir/pdns.conf"
if [ -z "$own_dir" ]; then
  # The caller's directory: pdns_server takes this process's place, so signals reach it directly.
  exec pdns_server --config-dir="$dir"
fi
# A directory of our own: removed once pdns_server exits.
pdns_server --config-dir="$dir" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
wait "$child" || true
wait "$child" 2>/dev/null || true
rm -rf "$dir"
