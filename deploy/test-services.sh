#!/usr/bin/env bash
# Private, loopback-only instances of the services the integration tests use:
# MariaDB, Redis and Apache Kafka (one KRaft node, broker+controller). Their
# own ports and data directories under .cache/services, so tests never touch a
# system instance. Idempotent: `up` installs what is missing and starts what is
# not running; `down` stops what it started (by pid).
#
#   deploy/test-services.sh up|down|status|env
#
# `up` prints only the export lines of `env` on stdout (test.sh evals it); all
# progress goes to stderr.
#
# Kafka: the jars of org.apache.kafka:kafka_2.13 (+ kafka-tools, log4j2) are
# fetched once with Maven (deploy/kafka/pom.xml) into
# $GOCHAT_TOOLS_DIR/kafka-<version>/libs (default ~/.cache/gochat-tools) and run
# with `java -cp`; later runs do not call Maven. Needs java 17+ and mvn (the
# Debian packages openjdk-17-jre-headless and maven are installed if missing).
# The storage under $STATE/kafka is formatted on first start only; the broker
# log is $STATE/kafka/logs/server.log (deploy/kafka/log4j2.properties). `up`
# returns once the broker logs "Kafka Server started" (90 s timeout). The JVM
# runs C1-only with a class-data archive recorded on the first clean shutdown
# ($TOOLS/kafka-<version>/kafka.jsa): ~3.5 s to ready instead of ~9.5 s on 2
# cores. Extra JVM flags: GOCHAT_TEST_KAFKA_JAVA_OPTS. The Kafka tools run
# against the same jars, e.g.
#   java -cp "$HOME/.cache/gochat-tools/kafka-4.4.0/libs/*" org.apache.kafka.tools.TopicCommand \
#     --bootstrap-server 127.0.0.1:19092 --list
#
# Ports (override with env): MySQL 13306, Redis 16379, Kafka 19092 (its KRaft
# controller listener: Kafka port + 1, GOCHAT_TEST_KAFKA_CONTROLLER_PORT).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${GOCHAT_SERVICES_DIR:-$ROOT/.cache/services}"
MYSQL_PORT="${GOCHAT_TEST_MYSQL_PORT:-13306}"
REDIS_PORT="${GOCHAT_TEST_REDIS_PORT:-16379}"
KAFKA_PORT="${GOCHAT_TEST_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${GOCHAT_TEST_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_VERSION=4.4.0 # keep in step with deploy/kafka/pom.xml
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
# What a live pid of ours must be running (guards against a reused pid after a reboot).
cmd_pattern() { case $1 in kafka) echo kafka.Kafka ;; tansu) echo tansu ;; esac; }
ours() { # ours NAME: $STATE/NAME.pid names a live process that is ours
  local pid="$STATE/$1.pid" pat; pat="$(cmd_pattern "$1")"
  alive "$pid" && { [[ -z $pat ]] || grep -qaF -- "$pat" "/proc/$(cat "$pid")/cmdline" 2>/dev/null; }
}
wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 300); do port_open "$port" && return 0; sleep 0.1; done
  log "$what did not open port $port"; return 1
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

# The Kafka jars, fetched with Maven once; a marker (the pom's checksum) records a
# complete fetch, so later runs never call Maven (and work offline).
kafka_libs() {
  local home="$TOOLS/kafka-$KAFKA_VERSION" pom="$ROOT/deploy/kafka/pom.xml" sum
  sum="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$home/.fetched" && "$(cat "$home/.fetched")" == "$sum" && -d "$home/libs" ]]; then
    echo "$home/libs"; return
  fi
  command -v mvn >/dev/null 2>&1 || apt_install maven >&2 # stdout is the libs path
  log "fetching Apache Kafka $KAFKA_VERSION with Maven into $home/libs"
  rm -rf "$home/libs.tmp" && mkdir -p "$home"
  mvn -B -ntp -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$home/libs.tmp" >"$home/fetch.log" 2>&1 ||
    { log "maven failed; $home/fetch.log ends with:"; tail -n 30 "$home/fetch.log" >&2; return 1; }
  rm -rf "$home/libs" && mv "$home/libs.tmp" "$home/libs"
  echo "$sum" >"$home/.fetched"
  echo "$home/libs"
}

# A random Kafka cluster id: 16 bytes, URL-safe base64 without padding.
kafka_cluster_id() { head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }

kafka_config() {
  local dir=$1
  cat <<EOF
# Generated by deploy/test-services.sh on every start; edits are overwritten.
# One KRaft node for tests: broker and controller in one process, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

# Small footprint: the box is shared with MariaDB, Redis and the tests.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
group.coordinator.threads=1
share.coordinator.threads=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216

# Single replica everywhere; few internal partitions (the group coordinator
# loads each __consumer_offsets partition on first use).
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
auto.leader.rebalance.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

# Fast group joins; tests may use short session timeouts.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
group.consumer.min.heartbeat.interval.ms=500

# An idle controller appends a no-op metadata record every 500 ms by default.
metadata.max.idle.interval.ms=5000

# Test data is disposable.
log.retention.hours=4
log.retention.check.interval.ms=60000
log.segment.bytes=67108864
EOF
}

up_kafka() {
  local pid="$STATE/kafka.pid" dir="$STATE/kafka"
  if [[ -f "$STATE/tansu.pid" ]]; then stop tansu 50; fi # left over from the old tansu-based script
  if ours kafka && port_open "$KAFKA_PORT"; then return; fi
  stop_kafka # still starting, or wedged: start afresh (no-op when not running)
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$port"; then log "port $port is in use by another process; cannot start kafka"; return 1; fi
  done
  command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
  local libs; libs="$(kafka_libs)"
  mkdir -p "$dir/data" "$dir/logs"
  kafka_config "$dir" >"$dir/server.properties"
  # C1 only (TieredStopAtLevel=1): on 2 shared cores C2 compiling costs more CPU than
  # a test workload ever wins back (measured: startup 9.4 s -> 5.8 s, and a third
  # of the broker CPU for 300k records). GOCHAT_TEST_KAFKA_JAVA_OPTS is appended
  # (later flags win, e.g. -XX:TieredStopAtLevel=4).
  local jvm=(java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -XX:TieredStopAtLevel=1 -Djava.awt.headless=true -Dkafka.logs.dir="$dir/logs"
    -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.properties")
  # shellcheck disable=SC2206 # word splitting of the extra options is intended
  jvm+=(${GOCHAT_TEST_KAFKA_JAVA_OPTS:-} -cp "$libs/*")
  # Class-data sharing: an archive of the broker's loaded classes halves its
  # startup CPU again (5.8 s -> 3.3 s). None yet (or stale: JDK or jars changed) -> this run records
  # one at exit, and stop_kafka installs it after a clean shutdown.
  local jsa="$TOOLS/kafka-$KAFKA_VERSION/kafka.jsa" cds=()
  rm -f "$dir/kafka.jsa.new"
  if [[ -f "$jsa" ]] && java -Xshare:on -XX:SharedArchiveFile="$jsa" -cp "$libs/*" -version >/dev/null 2>&1; then
    cds=(-XX:SharedArchiveFile="$jsa")
  else
    rm -f "$jsa"
    cds=(-XX:ArchiveClassesAtExit="$dir/kafka.jsa.new")
  fi
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    log "formatting kafka storage in $dir/data"
    # Share and streams groups off: nothing here uses them (their coordinators stay idle).
    "${jvm[@]}" kafka.tools.StorageTool format --config "$dir/server.properties" \
      --cluster-id "$(kafka_cluster_id)" --feature share.version=0 --feature streams.version=0 \
      >"$dir/logs/format.log" 2>&1 ||
      { log "kafka storage format failed:"; tail -n 20 "$dir/logs/format.log" >&2; return 1; }
  fi
  local f; for f in server.log server.log.1 server.log.2; do
    if [[ -f "$dir/logs/$f" ]]; then mv -f "$dir/logs/$f" "$dir/logs/$f.prev"; fi
  done
  # setsid + nohup: the broker outlives the shell that eval'd `up`.
  nohup setsid "${jvm[@]}" "${cds[@]}" kafka.Kafka "$dir/server.properties" >"$dir/logs/kafka.out" 2>&1 </dev/null &
  echo $! >"$pid"
  # Ready when the broker logs "Kafka Server started" (after it has registered
  # with its controller and been unfenced), not just when the port opens.
  local t0=$SECONDS ms0=${EPOCHREALTIME/[.,]/}
  until port_open "$KAFKA_PORT" && grep -qs 'Kafka Server started' "$dir/logs/server.log"; do
    if ! ours kafka; then
      log "kafka exited during startup; $dir/logs/server.log and kafka.out end with:"
      tail -n 30 "$dir/logs/server.log" "$dir/logs/kafka.out" >&2 2>/dev/null || true
      rm -f "$pid"; return 1
    fi
    if ((SECONDS - t0 >= 90)); then
      log "kafka not ready on 127.0.0.1:$KAFKA_PORT after 90 s; $dir/logs/server.log ends with:"
      tail -n 30 "$dir/logs/server.log" >&2 2>/dev/null || true
      stop_kafka; return 1
    fi
    sleep 0.2
  done
  local ms=$(((${EPOCHREALTIME/[.,]/} - ms0) / 1000))
  log "kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (ready in $((ms / 1000)).$(printf %03d $((ms % 1000))) s)"
}

# Stop the broker (controlled shutdown takes a few seconds); keep the class-data
# archive it wrote at exit if it exited cleanly and the archive checks out.
stop_kafka() {
  stop kafka 150
  local new="$STATE/kafka/kafka.jsa.new" home="$TOOLS/kafka-$KAFKA_VERSION"
  [[ -f "$new" ]] || return 0
  if ((!STOP_KILLED)) && java -Xshare:on -XX:SharedArchiveFile="$new" -cp "$home/libs/*" -version >/dev/null 2>&1; then
    mv -f "$new" "$home/kafka.jsa"
    log "saved the kafka class-data archive (faster starts from now on)"
  else
    rm -f "$new"
  fi
}

# stop NAME [TENTHS]: SIGTERM the pid in $STATE/NAME.pid and wait; with TENTHS
# (of a second), SIGKILL it if it is still running after that long.
stop() {
  local name=$1 pid="$STATE/$1.pid" kill_after=${2:-}
  STOP_KILLED=0
  if alive "$pid" && ! ours "$name"; then
    log "$pid names a process that is not $name; not stopping it"
  elif alive "$pid"; then
    kill "$(cat "$pid")" 2>/dev/null || true
    for _ in $(seq 1 "${kill_after:-100}"); do alive "$pid" || break; sleep 0.1; done
    if [[ -n $kill_after ]] && alive "$pid"; then
      log "$name did not stop in $((kill_after / 10)) s; killing it"
      kill -KILL "$(cat "$pid")" 2>/dev/null || true
      STOP_KILLED=1
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    fi
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
  down) stop_kafka; stop tansu 50; stop redis; stop mariadb ;;
  status)
    for s in mariadb:$MYSQL_PORT redis:$REDIS_PORT kafka:$KAFKA_PORT; do
      n=${s%%:*}; p=${s##*:}
      if ours "$n" && port_open "$p"; then echo "$n up (127.0.0.1:$p)"; else echo "$n down"; fi
    done ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
