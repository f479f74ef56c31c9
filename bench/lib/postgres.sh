# PostgreSQL streaming replication: the primary in us-east, a hot standby in eu-west and ap-southeast. Each
# standby streams from the primary through the WAN emulator's link from its region to us-east, and clients in
# a region reach the primary through that same link (the primary's own region connects directly).

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

pg() { runuser -u postgres -- "$PGBIN/$1" "${@:2}"; }
pg_streaming() { [ "$("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -Atc "select count(*) from pg_stat_replication where state = 'streaming'")" = 2 ]; }

postgres_up() {
  local admin p0 p1 p2
  read -r admin p0 p1 p2 <<<"$(free_ports 4)"
  local ports=("$p0" "$p1" "$p2")
  PG_PRIMARY_PORT=$p0
  mkdir -p "$RUN/pg"
  chown postgres "$RUN/pg"
  wan_config "$RUN/pg-wan.yaml" peers-postgres "$admin" "$(free_range 6)" "127.0.0.1:$p0" "127.0.0.1:$p1" "127.0.0.1:$p2"
  start_bg pg-wan "$MERIDIAN" wan --config "$RUN/pg-wan.yaml"
  wait_for 30 "the PostgreSQL WAN emulator starting" curl -sf "http://127.0.0.1:$admin/health"

  local primary="$RUN/pg/us-east"
  pg initdb -D "$primary" -A trust -U postgres --no-sync >"$RUN/pg-initdb.log" 2>&1 || die "initdb failed (see $RUN/pg-initdb.log)"
  cat >>"$primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $p0
unix_socket_directories = '$RUN/pg'
wal_level = replica
max_wal_senders = 10
hot_standby = on
synchronous_commit = on
fsync = on
max_connections = 200
CONF
  pg pg_ctl -D "$primary" -l "$RUN/pg/us-east.log" -w start >/dev/null || die "the PostgreSQL primary did not start (see $RUN/pg/us-east.log)"
  "$PGBIN/psql" -h 127.0.0.1 -p "$p0" -U postgres -qc \
    "CREATE TABLE bench (id bigserial PRIMARY KEY, v text NOT NULL); CREATE TABLE lag (id bigserial PRIMARY KEY, t timestamptz NOT NULL)"
  local via=() i region link
  for i in 1 2; do
    region=${REGIONS[$i]}
    link=$(wan_listen "$admin" "$region" us-east)
    via[$i]=$link
    pg pg_basebackup -h 127.0.0.1 -p "${link##*:}" -U postgres -D "$RUN/pg/$region" -X stream -c fast -R \
      >"$RUN/pg-basebackup-$region.log" 2>&1 || die "pg_basebackup for $region failed (see $RUN/pg-basebackup-$region.log)"
    cat >>"$RUN/pg/$region/postgresql.auto.conf" <<CONF
port = ${ports[$i]}
primary_conninfo = 'host=127.0.0.1 port=${link##*:} user=postgres application_name=${region//-/_}'
CONF
    pg pg_ctl -D "$RUN/pg/$region" -l "$RUN/pg/$region.log" -w start >/dev/null || die "the $region standby did not start (see $RUN/pg/$region.log)"
  done
  wait_for 60 "both PostgreSQL standbys streaming" pg_streaming
  PG_TARGETS=$(cat <<JSON
  "postgres": {
    "primary_region": "us-east",
    "via": { "us-east": "127.0.0.1:$p0", "eu-west": "${via[1]}", "ap-southeast": "${via[2]}" },
    "standbys": { "eu-west": "127.0.0.1:$p1", "ap-southeast": "127.0.0.1:$p2" },
    "standby_names": { "eu-west": "eu_west", "ap-southeast": "ap_southeast" },
    "pgbench": "$PGBIN/pgbench",
    "version": "$("$PGBIN/postgres" --version | awk '{print $3}')"
  },
JSON
)
  say "postgres: primary us-east, standbys eu-west and ap-southeast streaming through the WAN"
}
