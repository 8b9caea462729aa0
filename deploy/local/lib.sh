# shellcheck shell=bash
# Shared code of deploy/local/up, down and check. Sourced, never run on its own.
#
# Layout:
#   cache  ${REFILL_CACHE:-$HOME/.cache/refill}   installed jars, binaries, venv (kept between runs)
#   run    ${REFILL_RUN:-deploy/local/.run}       data, logs, pid files of the running servers
#   env    deploy/local/.env                       addresses of what is up (shell assignments)

LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY_DIR=$(dirname "$LOCAL_DIR")
CACHE=${REFILL_CACHE:-$HOME/.cache/refill}
RUN=${REFILL_RUN:-$LOCAL_DIR/.run}
ENV_FILE=${REFILL_ENV_FILE:-$LOCAL_DIR/.env}

# ---- pinned versions --------------------------------------------------------------------------
KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.25.5          # the log4j-api/core version kafka 4.4.0 itself depends on
SLF4J_VERSION=2.0.17          # slf4j 2 API so that log4j-slf4j2-impl binds (kafka's POM brings 1.7.36)
CASSANDRA_VERSION=5.0.9
CQLSH_VERSION=6.2.2           # PyPI cqlsh, used for the readiness probe and the LWT smoke test
STRIPE_MOCK_VERSION=v0.203.0
MVN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# ---- ports (loopback only) --------------------------------------------------------------------
KAFKA_PORT=${REFILL_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${REFILL_KAFKA_CONTROLLER_PORT:-9093}
CASSANDRA_PORT=${REFILL_CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${REFILL_CASSANDRA_STORAGE_PORT:-7000}
STRIPE_MOCK_PORT=${REFILL_STRIPE_MOCK_PORT:-12111}
STRIPE_MOCK_HTTPS_PORT=${REFILL_STRIPE_MOCK_HTTPS_PORT:-12112}
PROMETHEUS_PORT=${REFILL_PROMETHEUS_PORT:-9090}
POSTGRES_PORT=${REFILL_POSTGRES_PORT:-5432}
REDIS_PORT=${REFILL_REDIS_PORT:-6379}

# Start order: Cassandra is the slowest to boot, so it is launched first and boots while the
# others install.
ALL_SERVICES=(cassandra kafka stripe-mock prometheus postgres redis)

KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
CASSANDRA_HOME=$CACHE/cassandra-$CASSANDRA_VERSION
CQLSH_VENV=$CACHE/cqlsh-$CQLSH_VERSION
STRIPE_MOCK_BIN=$CACHE/bin/stripe-mock
PROM_HOME=$CACHE/prometheus

# ---- messages ---------------------------------------------------------------------------------
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
  exit 1
}
# tail_log FILE [N]: print the end of a log file on stderr, indented.
tail_log() {
  local f=$1 n=${2:-40}
  if [[ -s $f ]]; then
    local errs
    # error lines of the latest run only (launch appends a "==== ... deploy/local/up:" marker)
    errs=$(awk '/^==== .* deploy\/local\/up: /{n=0} {l[n++]=$0} END{for(i=0;i<n;i++) print l[i]}' "$f" |
      grep -E '(^| )(ERROR|FATAL)( |\[)|Caused by:|Exception:' | tail -n 6 || true)
    if [[ -n $errs ]]; then
      printf '       ---- error lines in %s ----\n' "$f" >&2
      cut -c1-300 <<<"$errs" | sed 's/^/       ! /' >&2
    fi
    printf '       ---- last %s lines of %s ----\n' "$n" "$f" >&2
    tail -n "$n" "$f" | sed 's/^/       | /' >&2
    printf '       ----\n' >&2
  else
    printf '       (log %s is empty or missing)\n' "$f" >&2
  fi
}

# ---- service names ----------------------------------------------------------------------------
is_service() {
  local s
  for s in "${ALL_SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}
# expand_services ARGS...: prints the services named (or all), in start order, no duplicates.
expand_services() {
  local want=() a s
  if (($# == 0)); then set -- all; fi
  for a in "$@"; do
    if [[ $a == all ]]; then
      want+=("${ALL_SERVICES[@]}")
    elif is_service "$a"; then
      want+=("$a")
    else
      die "unknown service '$a' (known: ${ALL_SERVICES[*]} all)"
    fi
  done
  for s in "${ALL_SERVICES[@]}"; do
    for a in "${want[@]}"; do
      if [[ $a == "$s" ]]; then
        echo "$s"
        break
      fi
    done
  done
}
fn_name() { echo "${1//-/_}"; } # stripe-mock -> stripe_mock

# ---- folders, lock ----------------------------------------------------------------------------
init_dirs() {
  mkdir -p "$CACHE" "$RUN" || die "cannot create cache $CACHE or run folder $RUN"
  CACHE=$(cd "$CACHE" && pwd)
  RUN=$(cd "$RUN" && pwd)
  KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
  CASSANDRA_HOME=$CACHE/cassandra-$CASSANDRA_VERSION
  CQLSH_VENV=$CACHE/cqlsh-$CQLSH_VERSION
  STRIPE_MOCK_BIN=$CACHE/bin/stripe-mock
  PROM_HOME=$CACHE/prometheus
}
# take_lock: one up/down at a time. fd 9 holds the lock; launched servers must not inherit it.
take_lock() {
  exec 9>"$RUN/.lock"
  if ! flock -n 9; then
    log "another deploy/local up/down holds $RUN/.lock; waiting (up to 15 min)"
    flock -w 900 9 || die "timed out waiting for $RUN/.lock"
  fi
}

# ---- .env -------------------------------------------------------------------------------------
# env_set KEY VALUE: replace or add KEY=VALUE in the .env file (atomic rename).
env_set() {
  local key=$1 val=$2 tmp
  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  if [[ -f $ENV_FILE ]]; then grep -v -E "^(export +)?$key=" "$ENV_FILE" >"$tmp" || true; fi
  printf '%s=%s\n' "$key" "$val" >>"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$ENV_FILE"
}
# env_unset KEY...: drop the keys; the file goes away when nothing is left.
env_unset() {
  [[ -f $ENV_FILE ]] || return 0
  local tmp key
  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  cp "$ENV_FILE" "$tmp"
  for key in "$@"; do
    grep -v -E "^(export +)?$key=" "$tmp" >"$tmp.2" || true
    mv "$tmp.2" "$tmp"
  done
  if [[ -s $tmp ]]; then
    chmod 644 "$tmp"
    mv "$tmp" "$ENV_FILE"
  else
    rm -f "$tmp" "$ENV_FILE"
  fi
}
env_keys() {
  case $1 in
    kafka) echo REFILL_KAFKA ;; # REFILL_KCAT stays: it is a tool, not a server
    cassandra) echo REFILL_CASSANDRA ;;
    stripe-mock) echo REFILL_STRIPE_MOCK ;;
    prometheus) echo REFILL_PROMETHEUS ;; # REFILL_PROMTOOL stays: it is a tool, not a server
    postgres) echo REFILL_POSTGRES ;;
    redis) echo REFILL_REDIS ;;
  esac
}

# ---- processes --------------------------------------------------------------------------------
pid_file() { echo "$RUN/$1.pid"; }
# a word that must appear in the command line of the service's process (guards against pid reuse)
pid_marker() {
  case $1 in
    kafka) echo kafka.Kafka ;;
    cassandra) echo org.apache.cassandra.service.CassandraDaemon ;;
    stripe-mock) echo stripe-mock ;;
    prometheus) echo prometheus ;;
    postgres) echo postgres ;;
    redis) echo redis-server ;;
  esac
}
read_pid() {
  local f
  f=$(pid_file "$1")
  [[ -s $f ]] || return 1
  local pid
  pid=$(head -n 1 "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  echo "$pid"
}
# alive SERVICE: the pid file names a live process that is this service.
alive() {
  local pid
  pid=$(read_pid "$1") || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmd marker
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  marker=$(pid_marker "$1")
  [[ $cmd == *"$marker"* ]]
}
# launch SERVICE LOGFILE CMD...: start CMD in its own session, in the background, output to LOGFILE.
launch() {
  local svc=$1 logf=$2
  shift 2
  mkdir -p "$(dirname "$logf")"
  printf '==== %s deploy/local/up: %s\n' "$(date -Is)" "$*" >>"$logf"
  setsid "$@" >>"$logf" 2>&1 </dev/null 9>&- &
  echo $! >"$(pid_file "$svc")"
}
# stop_pid SERVICE DEADLINE: SIGTERM, wait, SIGKILL after the deadline.
stop_pid() {
  local svc=$1 deadline=$2 pid i
  if ! alive "$svc"; then
    rm -f "$(pid_file "$svc")"
    return 0
  fi
  pid=$(read_pid "$svc")
  log "$svc: stopping pid $pid (SIGTERM, SIGKILL after ${deadline}s)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < deadline * 2; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    # a zombie (exited, not yet reaped) counts as gone
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
    log "$svc: pid $pid still there after ${deadline}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$(pid_file "$svc")"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# port_owner PORT: a short description of who listens on the port (for error messages).
port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | awk '{print $4, $6}' | head -n 3 | tr '\n' ' '; }

# ---- installing from Debian -------------------------------------------------------------------
SUDO=
if ((EUID != 0)); then SUDO=sudo; fi
apt_update_once() {
  local mark=$CACHE/.apt-updated
  if [[ -z $(find "$mark" -mmin -1440 2>/dev/null) ]]; then
    log "apt-get update"
    $SUDO apt-get update -qq >"$CACHE/apt.log" 2>&1 || {
      tail_log "$CACHE/apt.log" 20
      die "apt-get update failed"
    }
    touch "$mark"
  fi
}
# apt_install PKG...: install Debian packages (no recommends, no questions).
apt_install() {
  apt_update_once
  log "apt-get install $* (log: $CACHE/apt.log)"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >"$CACHE/apt.log" 2>&1; then
    rm -f "$CACHE/.apt-updated"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >"$CACHE/apt.log" 2>&1 || {
      tail_log "$CACHE/apt.log" 20
      die "apt-get install $* failed"
    }
  fi
}

# ---- Java 17 and Maven ------------------------------------------------------------------------
# find_java17: sets JAVA17 to a Java 17 binary (Cassandra 5.0 runs on 11 or 17 only; a newer JDK
# may be first on PATH). REFILL_JAVA17_HOME overrides.
find_java17() {
  [[ -n ${JAVA17:-} ]] && return 0
  local d cands=()
  [[ -n ${REFILL_JAVA17_HOME:-} ]] && cands+=("$REFILL_JAVA17_HOME")
  cands+=(/usr/lib/jvm/java-17-openjdk-* /usr/lib/jvm/*-17-* /usr/lib/jvm/*17*)
  for d in "${cands[@]}"; do
    [[ -x $d/bin/java ]] || continue
    local v
    v=$("$d/bin/java" -version 2>&1) || continue
    if [[ $v =~ version\ \"17[.\"] ]]; then
      JAVA17_HOME=$d
      JAVA17=$d/bin/java
      return 0
    fi
  done
  log "no Java 17 under /usr/lib/jvm; installing openjdk-17-jdk-headless"
  apt_install openjdk-17-jdk-headless
  for d in /usr/lib/jvm/java-17-openjdk-*; do
    if [[ -x $d/bin/java ]]; then
      JAVA17_HOME=$d
      JAVA17=$d/bin/java
      return 0
    fi
  done
  die "no Java 17 found under /usr/lib/jvm (Kafka and Cassandra 5.0 need it; set REFILL_JAVA17_HOME)"
}
need_mvn() {
  command -v mvn >/dev/null 2>&1 || apt_install maven
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) not found"
}
# mvn_copy_deps HOME: resolve HOME/pom.xml's dependencies into HOME/libs (local repo in the cache).
mvn_copy_deps() {
  local home=$1
  need_mvn
  rm -rf "$home/libs.tmp"
  log "mvn: resolving $(basename "$home") from Maven Central into $home/libs"
  if ! (cd "$home" && JAVA_HOME=$JAVA17_HOME mvn -B -q -Dmaven.repo.local="$CACHE/m2" \
    "$MVN_DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
    -DoutputDirectory="$home/libs.tmp") >"$home/mvn.log" 2>&1; then
    tail_log "$home/mvn.log" 30
    die "mvn dependency:copy-dependencies failed for $home/pom.xml (log: $home/mvn.log)"
  fi
  rm -rf "$home/libs"
  mv "$home/libs.tmp" "$home/libs"
}
# jar_has LIBDIR CLASSFILE: some jar in LIBDIR contains CLASSFILE (e.g. kafka/Kafka.class).
jar_has() {
  local j
  for j in "$1"/*.jar; do
    unzip -l "$j" "$2" >/dev/null 2>&1 && return 0
  done
  return 1
}

# ---- Kafka ------------------------------------------------------------------------------------
# kafka_tool [--timeout SECS] CLASS ARGS...: run a Kafka command line class from the cached jars
# (small, quick-starting JVM; warnings only, on stderr).
kafka_tool() {
  local pre=()
  if [[ $1 == --timeout ]]; then
    pre=(timeout "$2")
    shift 2
  fi
  local cls=$1
  shift
  find_java17
  [[ -f $KAFKA_HOME/libs/.complete ]] || die "Kafka jars are not installed (run deploy/local/up kafka)"
  "${pre[@]}" "$JAVA17" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile="file:$DEPLOY_DIR/kafka/tools-log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" "$cls" "$@"
}

# ---- kcat -------------------------------------------------------------------------------------
# find_kcat: sets KCAT to the kcat binary (Debian's package kcat, 1.7.1 on bookworm), the
# command line client the README uses to produce usage and read the dead-letter topic.
find_kcat() {
  KCAT=$(command -v kcat 2>/dev/null || true)
  [[ -n $KCAT ]]
}
# install_kcat: apt-get install kcat when it is missing (no service, nothing to start).
install_kcat() {
  find_kcat && return 0
  apt_install kcat
  find_kcat || die "no kcat on PATH after apt-get install kcat"
}

# ---- Cassandra --------------------------------------------------------------------------------
cqlsh_bin() { echo "$CQLSH_VENV/bin/cqlsh"; }

# ---- PostgreSQL -------------------------------------------------------------------------------
# find_pg_bin: sets PG_BIN to the newest /usr/lib/postgresql/N/bin with initdb and pg_ctl.
find_pg_bin() {
  local d
  PG_BIN=
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]] && PG_BIN=$d
  done
  [[ -n $PG_BIN ]]
}
# run a command as the postgres user when root (initdb refuses root), as oneself otherwise
as_pg() {
  if ((EUID == 0)); then
    (cd "$RUN/postgres" 2>/dev/null || cd /; runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# ---- Redis ------------------------------------------------------------------------------------
# find_redis: sets REDIS_SERVER and REDIS_CLI. Debian's redis-tools ships the server binary as
# redis-check-rdb (it runs as a server when called by the name redis-server).
find_redis() {
  REDIS_CLI=$(command -v redis-cli 2>/dev/null || true)
  if command -v redis-server >/dev/null 2>&1; then
    REDIS_SERVER=$(command -v redis-server)
  elif [[ -x /usr/bin/redis-check-rdb ]]; then
    mkdir -p "$CACHE/bin"
    ln -sfn /usr/bin/redis-check-rdb "$CACHE/bin/redis-server"
    REDIS_SERVER=$CACHE/bin/redis-server
  else
    REDIS_SERVER=
  fi
  [[ -n $REDIS_SERVER && -n $REDIS_CLI ]]
}
