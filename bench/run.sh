#!/usr/bin/env bash
# bench/run.sh — side-by-side load comparison: bare Caddy reverse_proxy vs the
# backstage_proxy policy layer in front of it, same binary, same upstream,
# same load, scenarios interleaved round by round. See BENCHMARKS.md.
#
#   bench/run.sh                          # 3 rounds x 10 s, wrk -t2 -c32
#   ROUNDS=5 DURATION=20 bench/run.sh
#   PROFILE=1 bench/run.sh                # + 10 s CPU profiles under load
#   BACKSTAGE_ORACLE=1 bench/run.sh       # + Backstage itself (Node.js)
#
# Environment (defaults):
#   ROUNDS=3 DURATION=10 (s) THREADS=2 CONNS=32 WARMUP=3 (s per scenario)
#   ROUTES="10 200"   extra open scenarios against configs with N routes, the
#                     hit route last ("" to skip)
#   BARE_OPS=1        scenario bare-ops: plain Caddy with a path matcher, the
#                     adapter's prefix strip and header ops, no backstage_proxy
#   BARE_ROUTES=1     scenarios bare-routesN: plain Caddy with N routes written
#                     the usual way (path matchers), for each N in ROUTES
#   JWKS_KEYS=1       keys in the upstream's JWKS (the signing key is last)
#   STARTS=5          start-to-ready measurements (median reported)
#   PROFILE=0         1: CPU profiles of the proxy (jwt, open) and bare Caddy
#   PROFILE_SECONDS=10
#   PAIRED=0          1: also run each scenario AT THE SAME TIME as bare Caddy
#                     (two wrk, -t1 -c CONNS/2 each), ROUNDS x DURATION per
#                     scenario: both sides see the same background load, so
#                     the ratio is far less noisy on a shared machine
#   BACKSTAGE_ORACLE=0  1: add the real Backstage proxy (needs node, npm and
#                     /work/shared/oracle or ORACLE_SRC); npm ci runs once
#                     into ORACLE_CACHE (/tmp/caddy-backstage-bench-oracle)
#   PORT_BASE=18180   ports PORT_BASE..PORT_BASE+13 on 127.0.0.1 must be free
#   OUT=bench/out/<timestamp>   results (wrk outputs, TSV, profiles, logs)
#   MAX_SECONDS       hard limit for the whole run (default: estimate + 300)
#
# Everything listens on 127.0.0.1 only. Every process started here is stopped
# on exit (by PID), including on error, Ctrl-C or the time limit.
set -u -o pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-3}
ROUTES=${ROUTES-10 200}
JWKS_KEYS=${JWKS_KEYS:-1}
STARTS=${STARTS:-5}
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
PAIRED=${PAIRED:-0}
BACKSTAGE_ORACLE=${BACKSTAGE_ORACLE:-0}
ORACLE_SRC=${ORACLE_SRC:-/work/shared/oracle}
ORACLE_CACHE=${ORACLE_CACHE:-/tmp/caddy-backstage-bench-oracle}
PORT_BASE=${PORT_BASE:-18180}

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-$REPO/bench/out/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d /tmp/caddy-backstage-bench.XXXXXX) || exit 1

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- lifecycle
PIDS=()
WATCHDOG=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
# forget_pid PID: after waiting for it, so that cleanup never signals a reused PID
forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done; PIDS=("${keep[@]}"); }
trap 'exit 130' INT
trap 'log "stopped (time limit or signal)"; exit 143' TERM

n_extra=$(wc -w <<<"$ROUTES")
n_scen=$((5 + n_extra))
[ "${BARE_ROUTES:-1}" = 1 ] && n_scen=$((n_scen + n_extra))
[ "$BACKSTAGE_ORACLE" = 1 ] && n_scen=$((n_scen + 2))
est=$(( n_scen * (ROUNDS * (DURATION + 1) + WARMUP + 1) + 4 * STARTS + 120 ))
[ "$PROFILE" = 1 ] && est=$(( est + 3 * (PROFILE_SECONDS + 5) ))
[ "$PAIRED" = 1 ] && est=$(( est + (n_scen - 1) * ROUNDS * (DURATION + 1) ))
[ "$BACKSTAGE_ORACLE" = 1 ] && est=$(( est + 180 ))
MAX_SECONDS=${MAX_SECONDS:-$(( est + 300 ))}
( for ((i = 0; i < MAX_SECONDS; i++)); do sleep 1; done
  echo "run.sh: time limit of ${MAX_SECONDS}s reached" >&2; kill -TERM $$ ) &
WATCHDOG=$!

# Caddy's autosave and data go to the temp dir, not to $HOME.
export XDG_CONFIG_HOME=$tmp/xdg-config XDG_DATA_HOME=$tmp/xdg-data

# ------------------------------------------------------------------- ports
P_UP=$PORT_BASE                 # Go upstream (and JWKS)
P_BARE=$((PORT_BASE + 1)); P_BARE_ADMIN=$((PORT_BASE + 2))
P_PROXY=$((PORT_BASE + 3)); P_PROXY_ADMIN=$((PORT_BASE + 4))
P_R1=$((PORT_BASE + 5))         # N-route configs: P_R1 + 2*i (admin off)
P_START=$((PORT_BASE + 10))     # start-up measurements (admin off)
P_BS=$((PORT_BASE + 11))        # Backstage oracle backend
P_START_BS=$((PORT_BASE + 12))
P_OPS=$((PORT_BASE + 13))        # bare Caddy + a path matcher, the adapter's rewrite and header ops
P_BR1=$((PORT_BASE + 14))        # bare N-route configs: P_BR1 + i (admin off)
for p in $(seq "$PORT_BASE" $((PORT_BASE + 13 + n_extra))); do
  case $p in 2999|9080|7007|17007|17100|17200) die "port $p is reserved (tests/oracle); change PORT_BASE";; esac
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "127.0.0.1:$p is in use; set PORT_BASE"
  fi
done

# ------------------------------------------------------------------- tools
command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
command -v wrk >/dev/null || die "wrk is not installed"
command -v curl >/dev/null || die "curl is required"

log "building ./cmd/caddy and ./bench/upstream"
go build -o "$tmp/caddy" ./cmd/caddy || die "go build ./cmd/caddy failed"
go build -o "$tmp/upstream" ./bench/upstream || die "go build ./bench/upstream failed"
cp "$tmp/caddy" "$OUT/caddy.bin" # kept for go tool pprof

now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_200() { # url timeout_s [curl args...]
  local url=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url")" = 200 ]; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.05
  done
}

# ---------------------------------------------------------------- upstream
"$tmp/upstream" -addr "127.0.0.1:$P_UP" -key "$tmp/jwt.pem" -jwks-keys "$JWKS_KEYS" >"$OUT/upstream.log" 2>&1 &
PIDS+=($!); UP_PID=$!
wait_200 "http://127.0.0.1:$P_UP/api/auth/.well-known/jwks.json" 10 || die "upstream did not start"
JWT=$("$tmp/upstream" -key "$tmp/jwt.pem" -mint -ttl 2h) || die "minting a user token failed"
STATIC=bench-static-token-0123456789abcdef

# -------------------------------------------------------------- configs
# bare Caddy: one route, reverse_proxy only. $1 listen port, $2 admin JSON
bare_config() {
  cat <<EOF
{"admin": $2,
 "apps": {"http": {"servers": {"bare": {
   "listen": ["127.0.0.1:$1"],
   "automatic_https": {"disable": true},
   "routes": [{"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:$P_UP"}]}]}]
 }}}}}
EOF
}
bare_config "$P_BARE" "{\"listen\": \"127.0.0.1:$P_BARE_ADMIN\"}" >"$tmp/bare.json"
bare_config "$P_START" '{"disabled": true}' >"$tmp/bare-start.json"
# bare-ops: plain Caddy doing what the adapter's route does around the policy
# handler (path matcher, prefix strip, the same reverse_proxy header ops and
# transport), without backstage_proxy: open - bare-ops = the handler itself.
cat >"$tmp/bare-ops.json" <<EOF
{"admin": {"disabled": true},
 "apps": {"http": {"servers": {"ops": {
   "listen": ["127.0.0.1:$P_OPS"],
   "automatic_https": {"disable": true},
   "routes": [{"match": [{"path": ["/api/proxy/open", "/api/proxy/open/*"]}],
     "handle": [
       {"handler": "rewrite", "strip_path_prefix": "/api/proxy/open"},
       {"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:$P_UP"}],
        "transport": {"protocol": "http", "compression": false},
        "headers": {"request": {"set": {"Host": ["127.0.0.1:$P_UP"]},
          "delete": ["Via", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"]}}}],
     "terminal": true}]
 }}}}}
EOF

# bare-routesN: N routes as one writes them in plain Caddy, the hit route
# (/rN) last; $1 N, $2 listen port
bare_routes_config() {
  local i sep=
  printf '{"admin": {"disabled": true}, "apps": {"http": {"servers": {"routes": {"listen": ["127.0.0.1:%s"], "automatic_https": {"disable": true}, "routes": [' "$2"
  for i in $(seq 1 "$1"); do
    printf '%s\n {"match": [{"path": ["/api/proxy/r%d", "/api/proxy/r%d/*"], "method": ["GET"]}], "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:%s"}]}], "terminal": true}' "$sep" "$i" "$i" "$P_UP"
    sep=,
  done
  printf '\n]}}}}}\n'
}

# app-config.yaml for the proxy: $1 listen port, $2 admin ("off" or host:port)
proxy_config() {
  cat <<EOF
caddy:
  admin: $2
  listen: 127.0.0.1:$1
backend:
  baseUrl: http://127.0.0.1:$1
  auth:
    externalAccess:
      - type: static
        options:
          token: $STATIC
          subject: bench-ci
discovery:
  endpoints:
    # user-token keys: <target>/.well-known/jwks.json on the upstream
    - target: http://127.0.0.1:$P_UP/api/{{pluginId}}
      plugins: [auth]
proxy:
  endpoints:
    /open:
      target: http://127.0.0.1:$P_UP
      credentials: dangerously-allow-unauthenticated
    /static:
      target: http://127.0.0.1:$P_UP
      credentials: require
    /jwt:
      target: http://127.0.0.1:$P_UP
      credentials: require
EOF
}
# N open routes, the one hit (/rN) last; $1 N, $2 listen port
routes_config() {
  printf 'caddy:\n  admin: "off"\n  listen: 127.0.0.1:%s\nbackend:\n  baseUrl: http://127.0.0.1:%s\nproxy:\n  endpoints:\n' "$2" "$2"
  local i
  for i in $(seq 1 "$1"); do
    printf '    /r%d:\n      target: http://127.0.0.1:%s\n      credentials: dangerously-allow-unauthenticated\n      allowedMethods: [GET]\n' "$i" "$P_UP"
  done
}
proxy_config "$P_PROXY" "127.0.0.1:$P_PROXY_ADMIN" >"$tmp/app-config.yaml"
proxy_config "$P_START" '"off"' >"$tmp/app-config-start.yaml"
cp "$tmp/app-config.yaml" "$tmp/bare.json" "$tmp/bare-ops.json" "$OUT/"

start_caddy() { # name args... ; sets LAST_PID
  local name=$1; shift
  "$tmp/caddy" run "$@" >"$OUT/$name.log" 2>&1 &
  LAST_PID=$!; PIDS+=($LAST_PID)
}

# ---------------------------------------------------------------- start-up
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit}; if (NR%2) print v[(NR+1)/2]; else printf "%.4f\n", (v[NR/2]+v[NR/2+1])/2}'; }
measure_starts() { # label url cmd...
  local label=$1 url=$2; shift 2
  local i ms all=()
  for i in $(seq "$STARTS"); do
    ms=$(TIME_START_LOG="$OUT/start-$label.log" "$tmp/upstream" -time-start "$url" -timeout 60s -- "$@") || { log "start-up measurement $label failed"; return 1; }
    all+=("$ms")
  done
  printf '%s\n' "${all[@]}" >"$OUT/start-$label.txt"
  printf '%s\t%s\t%s\n' "$label" "$(printf '%s\n' "${all[@]}" | median)" "${all[*]}" >>"$OUT/startup.tsv"
}
: >"$OUT/startup.tsv"
log "start-to-ready (exec -> first 200 through the open route), $STARTS starts each"
measure_starts proxy "http://127.0.0.1:$P_START/api/proxy/open/ready" \
  "$tmp/caddy" run --adapter backstage --config "$tmp/app-config-start.yaml"
measure_starts bare "http://127.0.0.1:$P_START/ready" "$tmp/caddy" run --config "$tmp/bare-start.json"

# ----------------------------------------------------------------- servers
start_caddy bare --config "$tmp/bare.json"; BARE_PID=$LAST_PID
start_caddy proxy --adapter backstage --config "$tmp/app-config.yaml"; PROXY_PID=$LAST_PID

# scenario table: name pid url authorization
S_NAME=(); S_PID=(); S_URL=(); S_AUTH=()
add_scenario() { S_NAME+=("$1"); S_PID+=("$2"); S_URL+=("$3"); S_AUTH+=("$4"); }
Q='/entities/by-name/component/default/bench?fields=metadata'
add_scenario bare   "$BARE_PID"  "http://127.0.0.1:$P_BARE/api/proxy/open$Q" ""
add_scenario open   "$PROXY_PID" "http://127.0.0.1:$P_PROXY/api/proxy/open$Q" ""
add_scenario static "$PROXY_PID" "http://127.0.0.1:$P_PROXY/api/proxy/static$Q" "Bearer $STATIC"
add_scenario jwt    "$PROXY_PID" "http://127.0.0.1:$P_PROXY/api/proxy/jwt$Q" "Bearer $JWT"
if [ "${BARE_OPS:-1}" = 1 ]; then
  start_caddy bare-ops --config "$tmp/bare-ops.json"
  add_scenario bare-ops "$LAST_PID" "http://127.0.0.1:$P_OPS/api/proxy/open$Q" ""
fi
i=0
for n in $ROUTES; do
  port=$((P_R1 + 2 * i)); i=$((i + 1))
  routes_config "$n" "$port" >"$tmp/routes-$n.yaml"
  start_caddy "routes$n" --adapter backstage --config "$tmp/routes-$n.yaml"
  add_scenario "routes$n" "$LAST_PID" "http://127.0.0.1:$port/api/proxy/r$n$Q" ""
  if [ "${BARE_ROUTES:-1}" = 1 ]; then
    bport=$((P_BR1 + i - 1))
    bare_routes_config "$n" "$bport" >"$tmp/bare-routes-$n.json"
    cp "$tmp/bare-routes-$n.json" "$OUT/"
    start_caddy "bare-routes$n" --config "$tmp/bare-routes-$n.json"
    add_scenario "bare-routes$n" "$LAST_PID" "http://127.0.0.1:$bport/api/proxy/r$n$Q" ""
  fi
done

if [ "$BACKSTAGE_ORACLE" = 1 ]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null || [ ! -d "$ORACLE_SRC" ]; then
    log "BACKSTAGE_ORACLE=1 but node/npm or $ORACLE_SRC is missing: skipping Backstage"
    BACKSTAGE_ORACLE=0
  else
    OR=$ORACLE_CACHE/oracle
    if [ ! -d "$OR/node_modules/@backstage/plugin-proxy-backend" ]; then
      log "copying the oracle to $ORACLE_CACHE and running npm ci (once)"
      rm -rf "$ORACLE_CACHE" && mkdir -p "$ORACLE_CACHE" && cp -r "$ORACLE_SRC" "$ORACLE_CACHE/" && chmod -R u+w "$OR" &&
        (cd "$OR" && timeout 300 npm ci --no-audit --no-fund >"$OUT/npm-ci.log" 2>&1) || die "npm ci failed (see $OUT/npm-ci.log)"
    fi
    (cd "$OR" && node gen-keys.js >/dev/null) || die "oracle gen-keys failed"
    # The oracle's echo upstream and JWKS server are replaced by our Go
    # upstream: ECHO_PORT and JWKS_PORT point at it.
    log "Backstage start-to-ready (exec -> readiness 200), $STARTS starts"
    (cd "$OR" && PEER_BACKEND_PORT=$P_START_BS ECHO_PORT=$P_UP JWKS_PORT=$P_UP \
      measure_starts backstage "http://127.0.0.1:$P_START_BS/.backstage/health/v1/readiness" node index.js --config app-config.yaml)
    (cd "$OR" && PEER_BACKEND_PORT=$P_BS ECHO_PORT=$P_UP JWKS_PORT=$P_UP exec node index.js --config app-config.yaml) >"$OUT/backstage.log" 2>&1 &
    BS_PID=$!; PIDS+=($BS_PID)
    wait_200 "http://127.0.0.1:$P_BS/.backstage/health/v1/readiness" 60 || die "Backstage did not become ready (see $OUT/backstage.log)"
    add_scenario bs-open   "$BS_PID" "http://127.0.0.1:$P_BS/api/proxy/open$Q" ""
    add_scenario bs-static "$BS_PID" "http://127.0.0.1:$P_BS/api/proxy/simple$Q" "Bearer peer-static-token-0123456789abcdefghijklmnopqrstuvwxyz"
  fi
fi

# ------------------------------------------------------------------- load
# The same browser-like headers for every scenario, plus Authorization.
HDRS=(-H 'Accept: application/json' -H 'Accept-Language: en' -H 'User-Agent: Mozilla/5.0 (bench)' -H 'Cookie: session=abc')
wrk_args() { # index
  local a=("${HDRS[@]}")
  [ -n "${S_AUTH[$1]}" ] && a+=(-H "Authorization: ${S_AUTH[$1]}")
  printf '%s\0' "${a[@]}"
}

for idx in "${!S_NAME[@]}"; do
  mapfile -d '' args < <(wrk_args "$idx")
  wait_200 "${S_URL[$idx]}" 30 "${args[@]}" ||
    die "${S_NAME[$idx]}: ${S_URL[$idx]} does not answer 200 (see $OUT/*.log)"
done
for idx in "${!S_NAME[@]}"; do
  idle=$(rss_kb "${S_PID[$idx]}"); printf '%s\t%s\n' "${S_NAME[$idx]}" "$idle" >>"$OUT/rss-idle.tsv"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime+stime
CLK_TCK=$(getconf CLK_TCK)
run_wrk() { # idx seconds outfile -> "peak_rss_kb cpu_ticks" of the server
  local idx=$1 secs=$2 out=$3 pid=${S_PID[$1]} args c0 c1
  mapfile -d '' args < <(wrk_args "$idx")
  c0=$(cpu_ticks "$pid")
  wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s --latency "${args[@]}" "${S_URL[$idx]}" >"$out" 2>&1 &
  local wpid=$! peak=0 r
  PIDS+=($wpid)
  while kill -0 "$wpid" 2>/dev/null; do
    r=$(rss_kb "$pid"); [ "${r:-0}" -gt "$peak" ] && peak=$r
    sleep 0.5
  done
  wait "$wpid"
  forget_pid "$wpid"
  c1=$(cpu_ticks "$pid")
  echo "$peak $((c1 - c0))"
}
to_ms() { # wrk latency: 812.00us 1.23ms 1.02s 1.5m
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f\n", n }'
}

log "warm-up: ${WARMUP}s per scenario"
for idx in "${!S_NAME[@]}"; do run_wrk "$idx" "$WARMUP" "$OUT/warmup-${S_NAME[$idx]}.txt" >/dev/null; done

printf 'round\tscenario\trps\tp50_ms\tp99_ms\tnon2xx\tsocket_errors\tpeak_rss_kb\tloadavg\tserver_cpu_us_per_req\n' >"$OUT/results.tsv"
for r in $(seq "$ROUNDS"); do
  for idx in "${!S_NAME[@]}"; do
    name=${S_NAME[$idx]}; f="$OUT/wrk-r$r-$name.txt"
    la=$(cut -d' ' -f1 /proc/loadavg)
    read -r peak ticks < <(run_wrk "$idx" "$DURATION" "$f")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f"); non2xx=${non2xx:-0}
    serr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$f"); serr=${serr:-0}
    nreq=$(awk '/requests in/ {print $1}' "$f")
    cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="${nreq:-0}" 'BEGIN {printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" "${rps:-0}" "$p50" "$p99" "$non2xx" "$serr" "$peak" "$la" "$cpu" >>"$OUT/results.tsv"
    log "round $r $name: ${rps:-?} req/s, p99 ${p99} ms, server CPU ${cpu} us/req, RSS ${peak} kB, non-2xx $non2xx, load $la"
  done
done

# ------------------------------------------------------------------ paired
# bare and one scenario under load simultaneously: the background load (other
# processes on a shared machine) hits both sides alike.
if [ "$PAIRED" = 1 ]; then
  half=$(( CONNS / 2 > 0 ? CONNS / 2 : 1 ))
  printf 'round\tscenario\trps\tbare_rps\tratio\tp99_ms\tbare_p99_ms\n' >"$OUT/paired.tsv"
  log "paired runs: bare and each scenario at the same time, wrk -t1 -c$half each"
  for r in $(seq "$ROUNDS"); do
    for idx in "${!S_NAME[@]}"; do
      [ "${S_NAME[$idx]}" = bare ] && continue
      name=${S_NAME[$idx]}
      mapfile -d '' a0 < <(wrk_args 0); mapfile -d '' a1 < <(wrk_args "$idx")
      wrk -t1 -c"$half" -d"${DURATION}s" --timeout 5s --latency "${a0[@]}" "${S_URL[0]}" >"$OUT/paired-r$r-$name-bare.txt" 2>&1 &
      w0=$!; PIDS+=($w0)
      wrk -t1 -c"$half" -d"${DURATION}s" --timeout 5s --latency "${a1[@]}" "${S_URL[$idx]}" >"$OUT/paired-r$r-$name.txt" 2>&1 &
      w1=$!; PIDS+=($w1)
      wait "$w0" "$w1"
      forget_pid "$w0"; forget_pid "$w1"
      rb=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/paired-r$r-$name-bare.txt")
      rs=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/paired-r$r-$name.txt")
      pb=$(to_ms "$(awk '$1 == "99%" {print $2}' "$OUT/paired-r$r-$name-bare.txt")")
      ps=$(to_ms "$(awk '$1 == "99%" {print $2}' "$OUT/paired-r$r-$name.txt")")
      ratio=$(awk -v a="${rs:-0}" -v b="${rb:-0}" 'BEGIN {printf "%.4f", (b > 0 ? a / b : 0)}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" "${rs:-0}" "${rb:-0}" "$ratio" "$ps" "$pb" >>"$OUT/paired.tsv"
      log "paired round $r $name: ${rs:-?} req/s vs bare ${rb:-?} req/s = $ratio"
    done
  done
fi

# ---------------------------------------------------------------- profiles
if [ "$PROFILE" = 1 ]; then
  profile() { # scenario-index admin-port label
    local idx=$1 port=$2 label=$3 wpid
    run_wrk "$idx" $((PROFILE_SECONDS + 2)) "$OUT/wrk-profile-$label.txt" >/dev/null &
    wpid=$!
    sleep 1
    curl -s --max-time $((PROFILE_SECONDS + 20)) -o "$OUT/cpu-$label.pprof" \
      "http://127.0.0.1:$port/debug/pprof/profile?seconds=$PROFILE_SECONDS" || log "profile $label failed"
    wait "$wpid"
    go tool pprof -top -nodecount=40 "$OUT/caddy.bin" "$OUT/cpu-$label.pprof" >"$OUT/cpu-$label.top" 2>/dev/null
    go tool pprof -top -cum -nodecount=400 "$OUT/caddy.bin" "$OUT/cpu-$label.pprof" 2>/dev/null |
      grep -E '^(Duration|Showing|      flat)|caddy-backstage-proxy\.' >"$OUT/cpu-$label.module.top"
    # the policy layer's own work: samples under backstageproxy but not
    # under reverse_proxy (which backstage_proxy calls as next)
    go tool pprof -top -focus='caddy-backstage-proxy\.' -ignore='reverseproxy' -nodecount=25 "$OUT/caddy.bin" "$OUT/cpu-$label.pprof" \
      >"$OUT/cpu-$label.policy.top" 2>/dev/null
  }
  for idx in "${!S_NAME[@]}"; do
    case ${S_NAME[$idx]} in
      jwt)  log "CPU profile: proxy, jwt";  profile "$idx" "$P_PROXY_ADMIN" proxy-jwt ;;
      open) log "CPU profile: proxy, open"; profile "$idx" "$P_PROXY_ADMIN" proxy-open ;;
      bare) log "CPU profile: bare";        profile "$idx" "$P_BARE_ADMIN" bare ;;
    esac
  done
fi

# ----------------------------------------------------------------- summary
col() { # scenario column -> values, one per round
  awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $2 == s {print $c}' "$OUT/results.tsv"
}
ratio_col() { # scenario column -> per-round ratio to bare
  awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 { v[$1 "," $2] = $c; r[$1] = 1 }
    END { for (k in r) if (v[k ",bare"] > 0 && ((k "," s) in v)) printf "%.4f\n", v[k "," s] / v[k ",bare"] }' "$OUT/results.tsv"
}
peak_rss() { col "$1" 8 | sort -g | tail -1; }
verdict() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=") ? (v >= t) : (v <= t); print (v == "nan" ? "n/a" : (ok ? "PASS" : "FAIL")) }'; }

{
  echo "# bench/run.sh results — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(go version | awk '{print $3}')"
  echo "load: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $ROUNDS rounds interleaved, warm-up ${WARMUP}s; JWKS keys: $JWKS_KEYS"
  echo "loadavg during the rounds: $(col bare 9 | tr '\n' ' ')(at each bare run)"
  echo
  echo "| scenario | req/s (median) | req/s per round | p50 ms | p99 ms | server CPU µs/req | peak RSS MB | non-2xx | vs bare req/s | vs bare p99 | vs bare CPU/req |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for name in "${S_NAME[@]}"; do
    rps=$(col "$name" 3 | median); p50=$(col "$name" 4 | median); p99=$(col "$name" 5 | median)
    all=$(col "$name" 3 | awk '{printf "%s%.0f", (NR > 1 ? " / " : ""), $1}')
    rss=$(awk -v k="$(peak_rss "$name")" 'BEGIN {printf "%.1f", k / 1024}')
    bad=$(col "$name" 6 | awk '{s += $1} END {print s + 0}')
    rr=$(ratio_col "$name" 3 | median); rp=$(ratio_col "$name" 5 | median)
    cpu=$(col "$name" 10 | median); rc=$(ratio_col "$name" 10 | median)
    printf '| %s | %.0f | %s | %.2f | %.2f | %.1f | %s | %s | %.3f | %.3f | %.3f |\n' "$name" "$rps" "$all" "$p50" "$p99" "$cpu" "$rss" "$bad" "$rr" "$rp" "$rc"
  done
  echo
  echo "Ratios are medians of the per-round ratios (each round runs bare and the scenario back to back)."
  echo "server CPU µs/req: CPU time (user+sys, /proc/<pid>/stat) of the server under test divided by the"
  echo "requests wrk completed; less sensitive to other processes on the machine than req/s."
  echo
  echo "| target | measured | threshold | result |"
  echo "|---|---:|---:|---|"
  v=$(ratio_col open 3 | median);   printf '| open: throughput vs bare | %.3f | ≥ 0.90 | %s |\n' "$v" "$(verdict "$v" '>=' 0.90)"
  v=$(ratio_col open 5 | median);   printf '| open: p99 vs bare | %.3f | ≤ 1.20 | %s |\n' "$v" "$(verdict "$v" '<=' 1.20)"
  v=$(ratio_col static 3 | median); printf '| static token: throughput vs bare | %.3f | ≥ 0.90 | %s |\n' "$v" "$(verdict "$v" '>=' 0.90)"
  v=$(ratio_col jwt 3 | median);    printf '| user token (ES256, cached): throughput vs bare | %.3f | ≥ 0.85 | %s |\n' "$v" "$(verdict "$v" '>=' 0.85)"
  pr=$(for s in open static jwt; do peak_rss "$s"; done | sort -g | tail -1); br=$(peak_rss bare)
  v=$(awk -v a="$pr" -v b="$br" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
  printf '| RSS under load vs bare (%.1f MB vs %.1f MB) | %s | ≤ 1.20 | %s |\n' "$(awk -v k="$pr" 'BEGIN{print k/1024}')" "$(awk -v k="$br" 'BEGIN{print k/1024}')" "$v" "$(verdict "$v" '<=' 1.20)"
  v=$(awk -F'\t' '$1 == "proxy" {print $2}' "$OUT/startup.tsv"); v=${v:-nan}
  printf '| start to ready, median of %s (ms) | %s | < 300 | %s |\n' "$STARTS" "$v" "$(verdict "$v" '<=' 299.999)"
  echo
  echo "start-to-ready (exec -> first 200), ms:"
  awk -F'\t' '{printf "  %-10s median %s   all: %s\n", $1, $2, $3}' "$OUT/startup.tsv"
  if [ -n "$ROUTES" ]; then
    echo
    echo "route count (open route, hit route last; the main config has 3 proxy routes, hit first):"
    for n in $ROUTES; do
      printf '  %s routes: %.0f req/s, %.3f x bare, p99 %.2f ms\n' "$n" "$(col "routes$n" 3 | median)" "$(ratio_col "routes$n" 3 | median)" "$(col "routes$n" 5 | median)"
      if [ "${BARE_ROUTES:-1}" = 1 ]; then
        printf '  %s routes in plain Caddy (path matchers): %.0f req/s, %.3f x bare, p99 %.2f ms\n' "$n" "$(col "bare-routes$n" 3 | median)" "$(ratio_col "bare-routes$n" 3 | median)" "$(col "bare-routes$n" 5 | median)"
      fi
    done
  fi
  if [ "$PAIRED" = 1 ]; then
    echo
    echo "paired (scenario and bare Caddy loaded at the same time, wrk -t1 -c$(( CONNS / 2 )) each; medians over $ROUNDS rounds):"
    echo
    echo "| scenario | req/s | bare req/s alongside | ratio (median) | ratios per round | p99 ratio (median) |"
    echo "|---|---:|---:|---:|---|---:|"
    for name in "${S_NAME[@]}"; do
      [ "$name" = bare ] && continue
      pc() { awk -F'\t' -v s="$name" -v c="$1" 'NR > 1 && $2 == s {print $c}' "$OUT/paired.tsv"; }
      printf '| %s | %.0f | %.0f | %.3f | %s | %.3f |\n' "$name" "$(pc 3 | median)" "$(pc 4 | median)" "$(pc 5 | median)" \
        "$(pc 5 | awk '{printf "%s%.3f", (NR > 1 ? " / " : ""), $1}')" \
        "$(awk -F'\t' -v s="$name" 'NR > 1 && $2 == s && $7 > 0 {printf "%.4f\n", $6 / $7}' "$OUT/paired.tsv" | median)"
    done
  fi
  if [ "$PROFILE" = 1 ]; then
    echo
    echo "CPU profiles: $OUT/cpu-*.pprof (go tool pprof $OUT/caddy.bin <file>); module lines:"
    for f in "$OUT"/cpu-proxy-*.module.top; do [ -f "$f" ] && { echo "--- $(basename "$f")"; head -25 "$f"; }; done
  fi
  echo
  echo "raw: $OUT/results.tsv, wrk outputs $OUT/wrk-*.txt"
} | tee "$OUT/summary.md"
