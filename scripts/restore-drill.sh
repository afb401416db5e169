#!/usr/bin/env bash
# The point-in-time recovery drill of docs/RUNBOOK.md, for real, on this machine:
#
#   1. a throwaway Postgres cluster with WAL archiving on its own port, a Mémoire server on it;
#   2. writes through the API (batch A), a base backup (pg_basebackup), more writes (batch B);
#   3. the time T; more writes (batch C); the WAL is archived; the cluster is lost;
#   4. a second throwaway cluster restored from the base backup and the archive to T, Mémoire's
#      Redis database emptied, a server started on it;
#   5. through the API: exactly batches A and B are there. Prints the RTO (from the start of the
#      restore to a server answering) and the RPO (what was written up to T and lost: nothing).
#
# Needs root (pg_createcluster; commands run as the postgres user), the Debian PostgreSQL the
# setup installs, Redis, the memoire-server binary (MEMOIRE_BIN, default target/debug) and the
# Python SDK (MEMOIRE_PYTHON, default .venv/bin/python; `make python-sdk`). Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${MEMOIRE_DRILL_PG_VERSION:-15}
BIN=${MEMOIRE_BIN:-$PWD/target/debug/memoire-server}
PY=${MEMOIRE_PYTHON:-$PWD/.venv/bin/python}
# A Redis database of its own: the drill empties it, as the runbook says to after a restore.
REDIS_DB=${MEMOIRE_DRILL_REDIS_DB:-13}
BATCH=5

say() { echo "drill: $*"; }
die() { echo "drill: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (pg_createcluster, and commands run as the postgres user)"
command -v pg_createcluster >/dev/null || die "pg_createcluster not found (Debian's postgresql-common; scripts/setup.sh installs it)"
[ -x "$BIN" ] || cargo build --locked --quiet -p memoire-app
"$PY" -c 'import memoire' 2>/dev/null || die "the Python SDK is not installed for $PY (make python-sdk)"

# `free_ports N`: N distinct free ports (the sockets are held together, so none is handed out twice).
free_ports() { python3 -c 'import socket, sys; s = [socket.socket() for _ in range(int(sys.argv[1]))]; [x.bind(("127.0.0.1", 0)) for x in s]; print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"; }
free_port() { free_ports 1; }
pg() { runuser -u postgres -- "$@"; }
sql() { pg psql -X -q -p "$1" -d "${3:-memoire}" -Atc "$2"; }
now() { date +%s.%N; }

work=$(mktemp -d /tmp/memoire-drill.XXXXXX)
chmod 755 "$work"
mkdir "$work/wal" "$work/base"
chown postgres: "$work/wal" "$work/base"
a="memoire_drill_a_$$"
b="memoire_drill_b_$$"
server_pid=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  stop_server
  for c in "$a" "$b"; do pg_dropcluster --stop "$VERSION" "$c" 2>/dev/null || true; done
  redis-cli -n "$REDIS_DB" flushdb >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A cluster that trusts loopback connections (it is throwaway and listens on 127.0.0.1 only).
make_cluster() { # name port
  pg_createcluster "$VERSION" "$1" -p "$2" >/dev/null
  local etc="/etc/postgresql/$VERSION/$1"
  printf '%s\n' "local all postgres peer" "local replication postgres peer" \
    "host all all 127.0.0.1/32 trust" >"$etc/pg_hba.conf"
  echo "listen_addresses = '127.0.0.1'" >"$etc/conf.d/00-drill.conf"
}

# Starts memoire-server on the cluster at `port`; returns when it answers.
start_server() { # port
  local grpc http
  read -r grpc http < <(free_ports 2)
  ENDPOINT="http://127.0.0.1:$grpc"
  MEMOIRE_DATABASE_URL="postgres://postgres@127.0.0.1:$1/memoire" \
    MEMOIRE_REDIS_URL="redis://127.0.0.1:6379/$REDIS_DB" \
    MEMOIRE_GRPC_ADDR="127.0.0.1:$grpc" MEMOIRE_HTTP_ADDR="127.0.0.1:$http" \
    MEMOIRE_ADMIN_KEY="drill-admin-key-0123456789" MEMOIRE_LOG=warn \
    "$BIN" >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    MEMOIRE_GRPC_ADDR="127.0.0.1:$grpc" MEMOIRE_LOG=off "$BIN" probe >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "the server exited"; }
    sleep 0.1
  done
  cat "$work/server.log" >&2
  die "the server did not become ready"
}

# The API client: the Python SDK.
cat >"$work/client.py" <<'EOF'
import json, sys
import memoire

endpoint, command = sys.argv[1], sys.argv[2]
if command == "tenant":
    admin = memoire.Memoire(endpoint, "drill-admin-key-0123456789")
    tenant = admin.create_tenant("drill")["tenant"]["id"]
    print(admin.create_api_key(tenant, role="writer", name="drill")["secret"])
elif command == "write":
    key, label, n = sys.argv[3], sys.argv[4], int(sys.argv[5])
    client = memoire.Memoire(endpoint, key, user="drill")
    for i in range(n):
        client.teach(f"Remembers {label} number {i}", kind="fact", force_create=True)
elif command == "list":
    client = memoire.Memoire(endpoint, sys.argv[3], user="drill")
    reply = client.list_memories(page_size=500)
    print("\n".join(sorted(m["content"] for m in reply.get("memories", []))))
EOF
api() { "$PY" "$work/client.py" "$ENDPOINT" "$@"; }

# 1. The primary: WAL archived to $work/wal as each segment fills (or is switched).
port_a=$(free_port)
make_cluster "$a" "$port_a"
cat >>"/etc/postgresql/$VERSION/$a/conf.d/00-drill.conf" <<EOF
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $work/wal/%f && cp %p $work/wal/%f'
EOF
pg_ctlcluster "$VERSION" "$a" start
pg createdb -p "$port_a" memoire
start_server "$port_a"
say "primary on port $port_a, server at $ENDPOINT"

# 2. Batch A, the base backup, batch B.
key=$(api tenant)
api write "$key" "batch A" "$BATCH"
pg pg_basebackup -p "$port_a" -D "$work/base" -X stream -c fast
say "base backup taken ($(du -sh "$work/base" | cut -f1))"
api write "$key" "batch B" "$BATCH"

# 3. T, batch C, the last WAL segment archived; then the primary is lost.
sleep 0.2
T=$(sql "$port_a" "SELECT now()")
sleep 0.2
api write "$key" "batch C" "$BATCH"
segment=$(sql "$port_a" "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  [ -f "$work/wal/$segment" ] && break
  sleep 0.1
done
[ -f "$work/wal/$segment" ] || die "WAL segment $segment was not archived"
stop_server
pg_ctlcluster "$VERSION" "$a" stop
say "T = $T; primary stopped after batch C"

# 4. Restore to T into a new cluster, empty Mémoire's Redis, start a server.
started=$(now)
port_b=$(free_port)
make_cluster "$b" "$port_b"
data_b="/var/lib/postgresql/$VERSION/$b"
find "$data_b" -mindepth 1 -delete
cp -a "$work/base/." "$data_b/"
chmod 700 "$data_b"
cat >>"/etc/postgresql/$VERSION/$b/conf.d/00-drill.conf" <<EOF
restore_command = 'cp $work/wal/%f %p'
recovery_target_time = '$T'
recovery_target_action = 'promote'
EOF
pg touch "$data_b/recovery.signal"
pg_ctlcluster "$VERSION" "$b" start
for _ in $(seq 1 300); do
  [ "$(sql "$port_b" "SELECT pg_is_in_recovery()" postgres 2>/dev/null)" = "f" ] && break
  sleep 0.1
done
[ "$(sql "$port_b" "SELECT pg_is_in_recovery()" postgres)" = "f" ] || die "the restored cluster did not finish recovery"
recovered=$(now)
# Redis holds only what is derived from Postgres; views built from writes after T must go.
redis-cli -n "$REDIS_DB" flushdb >/dev/null
start_server "$port_b"
answering=$(now)
rto=$(awk "BEGIN { print $answering - $started }")
restore=$(awk "BEGIN { print $recovered - $started }")
serve=$(awk "BEGIN { print $answering - $recovered }")

# 5. Exactly batches A and B.
got=$(api list "$key")
want=$(for l in A B; do for i in $(seq 0 $((BATCH - 1))); do echo "Remembers batch $l number $i"; done; done | sort)
stop_server
lost=$(comm -23 <(echo "$want") <(echo "$got") | grep -c . || true)
extra=$(comm -13 <(echo "$want") <(echo "$got") | grep -c . || true)
say "restored to T: $(echo "$got" | grep -c .) memories; of the $((2 * BATCH)) written up to T, $lost lost; of the $BATCH written after T, $extra present"
if [ "$lost" != 0 ] || [ "$extra" != 0 ]; then
  echo "expected:" >&2; echo "$want" >&2; echo "got:" >&2; echo "$got" >&2
  die "the restore does not hold exactly the writes up to T"
fi
printf 'drill: RTO %.1f s to a server answering (Postgres restored and promoted in %.1f s, server started in %.1f s); RPO 0 writes up to T lost (a lost primary loses at most its unarchived WAL: archive_timeout bounds it)\n' "$rto" "$restore" "$serve"
