#!/usr/bin/env bash
# bench/scale.sh — routing at scale (issue #14): bare Caddy's single route vs
# the proxy with N endpoints, for (a) the LAST endpoint and (b) a request
# outside the proxy mount that falls through to caddy.backend (Backstage's
# own API), same binary, same upstream, scenarios interleaved round by round.
# See BENCHMARKS.md, "Routing at scale".
#
#   bench/scale.sh                        # N = 50 500 1000, 3 rounds x 5 s
#   BASE_REV=24db42a bench/scale.sh       # + the same scenarios on another
#                                         #   revision's binary, in the same run
#
# Environment (defaults):
#   SIZES="50 500 1000" ROUNDS=3 DURATION=5 (s) WARMUP=2 (s) THREADS=2 CONNS=32
#   BASE_REV=         a git revision to build as well (temporary worktree)
#   PORT_BASE=18200   uses PORT_BASE .. PORT_BASE+1+2*|SIZES|
#
# Each ratio is the scenario's req/s over bare Caddy's in the same round; the
# summary gives the median of the per-round ratios. Output: bench/out/scale-<ts>/.
set -u
SIZES=${SIZES:-50 500 1000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
BASE_REV=${BASE_REV:-}
PORT_BASE=${PORT_BASE:-18200}

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-$REPO/bench/out/scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d /tmp/caddy-backstage-scale.XXXXXX) || exit 1

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
WATCHDOG=
BASE_WT=
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "$BASE_WT" ] && git -C "$REPO" worktree remove --force "$BASE_WT" 2>/dev/null
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'log "stopped (time limit or signal)"; exit 143' TERM

n_sizes=$(wc -w <<<"$SIZES")
builds=1; [ -n "$BASE_REV" ] && builds=2
n_scen=$((1 + 2 * n_sizes * builds))
MAX_SECONDS=${MAX_SECONDS:-$(( n_scen * (ROUNDS * (DURATION + 1) + WARMUP + 2) + 600 ))}
( for ((i = 0; i < MAX_SECONDS; i++)); do sleep 1; done
  echo "scale.sh: time limit of ${MAX_SECONDS}s reached" >&2; kill -TERM $$ ) &
WATCHDOG=$!
export XDG_CONFIG_HOME=$tmp/xdg-config XDG_DATA_HOME=$tmp/xdg-data

P_UP=$PORT_BASE
P_BARE=$((PORT_BASE + 1))
last_port=$((PORT_BASE + 1 + n_sizes * builds))
for p in $(seq "$PORT_BASE" "$last_port"); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "127.0.0.1:$p is in use; set PORT_BASE"; fi
done

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
command -v wrk >/dev/null || die "wrk is not installed"

log "building ./cmd/caddy and ./bench/upstream"
go build -o "$tmp/caddy" ./cmd/caddy || die "go build ./cmd/caddy failed"
go build -o "$tmp/upstream" ./bench/upstream || die "go build ./bench/upstream failed"
BINS=(new); BIN_PATH=("$tmp/caddy"); BIN_DESC=("$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+dirty')")
if [ -n "$BASE_REV" ]; then
  BASE_WT=$tmp/base-worktree
  git worktree add --detach -q "$BASE_WT" "$BASE_REV" || die "git worktree add $BASE_REV failed"
  log "building $BASE_REV"
  (cd "$BASE_WT" && go build -o "$tmp/caddy-base" ./cmd/caddy) || die "go build at $BASE_REV failed"
  BINS+=(base); BIN_PATH+=("$tmp/caddy-base"); BIN_DESC+=("$(git rev-parse --short "$BASE_REV")")
fi

wait_200() { # url timeout_s
  local url=$1 deadline=$(( $(date +%s) + $2 ))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ]; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.1
  done
}

"$tmp/upstream" -addr "127.0.0.1:$P_UP" -key "$tmp/jwt.pem" >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
wait_200 "http://127.0.0.1:$P_UP/x" 10 || die "upstream did not start"

cat >"$tmp/bare.json" <<EOF
{"admin": {"disabled": true},
 "apps": {"http": {"servers": {"bare": {
   "listen": ["127.0.0.1:$P_BARE"],
   "automatic_https": {"disable": true},
   "routes": [{"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:$P_UP"}]}]}]
 }}}}}
EOF
# N open endpoints /r1 .. /rN (GET only, as bench/run.sh's), the one hit
# last; everything else goes to caddy.backend, the same upstream.
scale_config() { # N port
  printf 'caddy:\n  admin: "off"\n  listen: 127.0.0.1:%s\n  backend: http://127.0.0.1:%s\nbackend:\n  baseUrl: http://127.0.0.1:%s\nproxy:\n  endpoints:\n' "$2" "$P_UP" "$2"
  local i
  for i in $(seq 1 "$1"); do
    printf '    /r%d:\n      target: http://127.0.0.1:%s\n      credentials: dangerously-allow-unauthenticated\n      allowedMethods: [GET]\n' "$i" "$P_UP"
  done
}

S_NAME=(); S_URL=(); S_PID=()
Q='/entities/by-name/component/default/bench?fields=metadata'
"$tmp/caddy" run --config "$tmp/bare.json" >"$OUT/bare.log" 2>&1 &
PIDS+=($!)
S_NAME+=(bare); S_URL+=("http://127.0.0.1:$P_BARE/api/catalog$Q"); S_PID+=($!)
port=$((P_BARE + 1))
for b in "${!BINS[@]}"; do
  for n in $SIZES; do
    scale_config "$n" "$port" >"$OUT/${BINS[$b]}-$n.yaml"
    "${BIN_PATH[$b]}" run --adapter backstage --config "$OUT/${BINS[$b]}-$n.yaml" >"$OUT/${BINS[$b]}-$n.log" 2>&1 &
    PIDS+=($!)
    S_NAME+=("${BINS[$b]}-last$n"); S_URL+=("http://127.0.0.1:$port/api/proxy/r$n$Q"); S_PID+=($!)
    S_NAME+=("${BINS[$b]}-outside$n"); S_URL+=("http://127.0.0.1:$port/api/catalog$Q"); S_PID+=($!)
    port=$((port + 1))
  done
done
for i in "${!S_NAME[@]}"; do
  wait_200 "${S_URL[$i]}" 60 || die "${S_NAME[$i]}: ${S_URL[$i]} does not answer 200 (see $OUT/*.log)"
done

HDRS=(-H 'Accept: application/json' -H 'Accept-Language: en' -H 'User-Agent: Mozilla/5.0 (bench)' -H 'Cookie: session=abc')
run_wrk() { wrk -t"$THREADS" -c"$CONNS" -d"$2s" --timeout 5s "${HDRS[@]}" "${S_URL[$1]}" >"$3" 2>&1; }
log "warm-up: ${WARMUP}s per scenario (${#S_NAME[@]} scenarios)"
for i in "${!S_NAME[@]}"; do run_wrk "$i" "$WARMUP" "$OUT/warmup-${S_NAME[$i]}.txt"; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime+stime
CLK_TCK=$(getconf CLK_TCK)
printf 'round\tscenario\trps\tnon2xx\tloadavg\tcpu_us_per_req\n' >"$OUT/results.tsv"
for r in $(seq "$ROUNDS"); do
  for i in "${!S_NAME[@]}"; do
    f="$OUT/wrk-r$r-${S_NAME[$i]}.txt"
    la=$(cut -d' ' -f1 /proc/loadavg)
    c0=$(cpu_ticks "${S_PID[$i]}")
    run_wrk "$i" "$DURATION" "$f"
    c1=$(cpu_ticks "${S_PID[$i]}")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    nreq=$(awk '/requests in/ {print $1}' "$f")
    cpu=$(awk -v t="$((c1 - c0))" -v hz="$CLK_TCK" -v n="${nreq:-0}" 'BEGIN {printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "${S_NAME[$i]}" "${rps:-0}" "${bad:-0}" "$la" "$cpu" >>"$OUT/results.tsv"
    log "round $r ${S_NAME[$i]}: ${rps:-?} req/s, server CPU $cpu us/req, non-2xx ${bad:-0}, load $la"
  done
done

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit}; if (NR%2) print v[(NR+1)/2]; else printf "%.4f\n", (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -F'\t' -v s="$1" -v c="${2:-3}" 'NR > 1 && $2 == s {print $c}' "$OUT/results.tsv"; }
ratio() { awk -F'\t' -v s="$1" 'NR > 1 { v[$1 "," $2] = $3; r[$1] = 1 }
  END { for (k = 1; k in r; k++) if (v[k ",bare"] > 0 && ((k "," s) in v)) printf "%.4f\n", v[k "," s] / v[k ",bare"] }' "$OUT/results.tsv"; }
# bare's server CPU per request over the scenario's, same round: the
# throughput ratio the server's own work allows, less sensitive to load
# from other processes than req/s
cpu_ratio() { awk -F'\t' -v s="$1" 'NR > 1 { v[$1 "," $2] = $6; r[$1] = 1 }
  END { for (k = 1; k in r; k++) if (v[k "," s] > 0 && ((k ",bare") in v)) printf "%.4f\n", v[k ",bare"] / v[k "," s] }' "$OUT/results.tsv"; }
per_round() { awk '{printf "%s%.2f", (NR > 1 ? " / " : ""), $1}'; }
{
  echo "# bench/scale.sh — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "machine: $(nproc) cores, $(go version | awk '{print $3}'); wrk -t$THREADS -c$CONNS, ${DURATION}s per sample, $ROUNDS rounds interleaved"
  for b in "${!BINS[@]}"; do echo "binary ${BINS[$b]}: ${BIN_DESC[$b]}"; done
  echo "bare: one route, reverse_proxy only: $(col bare | median | awk '{printf "%.0f", $1}') req/s, $(col bare 6 | median) µs server CPU per request (medians)"
  echo "loadavg at each bare run: $(col bare 5 | tr '\n' ' ')"
  echo
  echo "req/s ratio: the scenario's req/s over bare's, same round. CPU ratio: bare's server CPU µs/req over the scenario's, same round. Medians of the per-round ratios."
  echo
  echo "| binary | endpoints | last endpoint: req/s ratio | CPU ratio | per round (req/s; CPU) | outside the mount (caddy.backend): req/s ratio | CPU ratio | per round (req/s; CPU) | non-2xx |"
  echo "|---|---:|---:|---:|---|---:|---:|---|---:|"
  for b in "${BINS[@]}"; do
    for n in $SIZES; do
      l="$b-last$n"; o="$b-outside$n"
      bad=$(awk -F'\t' -v a="$l" -v c="$o" 'NR > 1 && ($2 == a || $2 == c) {s += $4} END {print s + 0}' "$OUT/results.tsv")
      printf '| %s | %s | %.3f | %.3f | %s; %s | %.3f | %.3f | %s; %s | %s |\n' "$b" "$n" \
        "$(ratio "$l" | median)" "$(cpu_ratio "$l" | median)" "$(ratio "$l" | per_round)" "$(cpu_ratio "$l" | per_round)" \
        "$(ratio "$o" | median)" "$(cpu_ratio "$o" | median)" "$(ratio "$o" | per_round)" "$(cpu_ratio "$o" | per_round)" "$bad"
    done
  done
  echo
  echo "raw: $OUT/results.tsv"
} | tee "$OUT/summary.md"
