#!/usr/bin/env bash
# Private, loopback-only instances of the services the integration tests use:
# MariaDB, Redis and a Kafka-protocol broker (tansu). Their own ports and
# data directories under .cache/services, so tests never touch a system
# instance. Idempotent: `up` installs what is missing and starts what is not
# running; `down` stops what it started (by pid).
#
#   deploy/test-services.sh up|down|status|env
#
# Ports (override with env): MySQL 13306, Redis 16379, Kafka 19092.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${GOCHAT_SERVICES_DIR:-$ROOT/.cache/services}"
MYSQL_PORT="${GOCHAT_TEST_MYSQL_PORT:-13306}"
REDIS_PORT="${GOCHAT_TEST_REDIS_PORT:-16379}"
KAFKA_PORT="${GOCHAT_TEST_KAFKA_PORT:-19092}"
TOOLS="${GOCHAT_TOOLS_DIR:-$HOME/.cache/gochat-tools}"
mkdir -p "$STATE" "$TOOLS"

log() { printf '[services] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 300); do port_open "$port" && return 0; sleep 0.1; done
  log "$what did not open port $port"; return 1
}

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  if [[ ! -x "$TOOLS/bin/tansu" ]]; then
    log "building the tansu broker (cargo install --locked tansu; ~11 min on 2 cores, cached in $TOOLS)"
    cargo install --locked --quiet --root "$TOOLS" tansu --features dynostore >&2
  fi
  echo "$TOOLS/bin/tansu"
}

up_mysql() {
  local dir="$STATE/mariadb" pid="$STATE/mariadb.pid"
  if alive "$pid" && port_open "$MYSQL_PORT"; then return; fi
  apt_install mariadb-server mariadb-client
  if [[ ! -d "$dir/mysql" ]]; then
    mkdir -p "$dir"
    mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$dir" --auth-root-authentication-method=normal \
      --skip-test-db >"$STATE/mariadb-install.log" 2>&1
  fi
  local mariadbd; mariadbd="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
  nohup "$mariadbd" --no-defaults --user="$(id -un)" --datadir="$dir" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --socket="$STATE/mariadb.sock" --pid-file="$pid" \
    --skip-name-resolve --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=1 \
    --max-connections=500 --log-error="$STATE/mariadb.err" >/dev/null 2>&1 &
  wait_port "$MYSQL_PORT" mariadb
  for _ in $(seq 1 100); do [[ -f "$pid" ]] && break; sleep 0.1; done
  log "mariadb on 127.0.0.1:$MYSQL_PORT"
}

up_redis() {
  local pid="$STATE/redis.pid"
  if alive "$pid" && port_open "$REDIS_PORT"; then return; fi
  apt_install redis-server
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$pid" --logfile "$STATE/redis.log" --dir "$STATE"
  wait_port "$REDIS_PORT" redis
  log "redis on 127.0.0.1:$REDIS_PORT"
}

up_kafka() {
  local pid="$STATE/tansu.pid"
  if alive "$pid" && port_open "$KAFKA_PORT"; then return; fi
  local bin; bin="$(tansu_bin)"
  nohup "$bin" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
    >"$STATE/tansu.log" 2>&1 &
  echo $! >"$pid"
  wait_port "$KAFKA_PORT" tansu
  log "kafka (tansu) on 127.0.0.1:$KAFKA_PORT"
}

stop() {
  local name=$1 pid="$STATE/$1.pid"
  if alive "$pid"; then
    kill "$(cat "$pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    log "stopped $name"
  fi
  rm -f "$pid"
}

env_lines() {
  echo "export GOCHAT_TEST_MYSQL_URL=mysql://root@127.0.0.1:$MYSQL_PORT"
  echo "export GOCHAT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  echo "export GOCHAT_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
}

case "${1:-}" in
  up) up_mysql; up_redis; up_kafka; env_lines ;;
  down) stop tansu; stop redis; stop mariadb ;;
  status)
    for s in mariadb:$MYSQL_PORT redis:$REDIS_PORT tansu:$KAFKA_PORT; do
      n=${s%%:*}; p=${s##*:}
      if alive "$STATE/$n.pid" && port_open "$p"; then echo "$n up (127.0.0.1:$p)"; else echo "$n down"; fi
    done ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
