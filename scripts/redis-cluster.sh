#!/usr/bin/env bash
# A throwaway local Redis Cluster for the tests: three primaries on free loopback ports, nothing
# kept on disk. `start DIR` starts it (its files and pids in DIR) and prints the URL that names
# it (redis-cluster://…); `stop DIR` stops it and removes DIR. Needs redis-server and redis-cli
# (scripts/setup.sh installs them).
set -euo pipefail

cmd=${1:?usage: redis-cluster.sh start|stop DIR}
dir=${2:?usage: redis-cluster.sh start|stop DIR}

free() { # a port whose cluster bus port (+10000) is free too
  python3 - "$1" <<'PY'
import socket, sys
start = int(sys.argv[1])
for p in range(start, start + 900):
    ok = True
    for q in (p, p + 10000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(p)
        break
PY
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    ports=()
    next=17000
    for _ in 1 2 3; do
      p=$(free "$next")
      [ -n "$p" ] || { echo "redis-cluster: no free port" >&2; exit 1; }
      ports+=("$p")
      next=$((p + 1))
      redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-node-timeout 2000 \
        --cluster-config-file "$dir/nodes-$p.conf" --dir "$dir" --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis-$p.pid" --logfile "$dir/redis-$p.log"
    done
    for p in "${ports[@]}"; do
      for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
      || { cat "$dir/create.log" >&2; exit 1; }
    for p in "${ports[@]}"; do
      for _ in $(seq 1 200); do
        redis-cli -p "$p" cluster info 2>/dev/null | grep -q cluster_state:ok && break
        sleep 0.1
      done
      redis-cli -p "$p" cluster info | grep -q cluster_state:ok \
        || { echo "redis-cluster: node $p is not ready" >&2; exit 1; }
    done
    echo "redis-cluster://127.0.0.1:${ports[0]}?node=127.0.0.1:${ports[1]}&node=127.0.0.1:${ports[2]}"
    ;;
  stop)
    for pid in "$dir"/redis-*.pid; do
      [ -e "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    sleep 0.2
    rm -rf "$dir"
    ;;
  *)
    echo "usage: redis-cluster.sh start|stop DIR" >&2
    exit 2
    ;;
esac
