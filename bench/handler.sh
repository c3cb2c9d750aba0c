#!/usr/bin/env bash
# bench/handler.sh — the handler-alone Go benchmarks, measured so that a noisy
# machine still gives a usable answer: the test binary runs ROUNDS times, one
# sample per round, and the table gives each benchmark's median, fastest and
# slowest sample, the median minus the pass-through's, and the targets.
#
#   bench/handler.sh                 # BenchmarkHandlerNoopNext, 10 rounds
#   bench/handler.sh HEAD~3          # also HEAD~3's code, its rounds interleaved
#                                    # with the working tree's (A/B)
#   BENCH='BenchmarkHandler(Open|StaticToken|UserTokenCached)$|BenchmarkPassThrough$' bench/handler.sh
#
# Environment (defaults): BENCH=BenchmarkHandlerNoopNext ROUNDS=10
#   BENCHTIME=1s (per sample) OUT=bench/out/handler-<timestamp>
# With a revision, benchstat's comparison is printed too when benchstat is
# installed (GOBIN=/tmp/bin go install golang.org/x/perf/cmd/benchstat@latest;
# it is looked for in PATH and /tmp/bin).
set -euo pipefail

BENCH=${BENCH:-BenchmarkHandlerNoopNext}
ROUNDS=${ROUNDS:-10}
BENCHTIME=${BENCHTIME:-1s}
REV=${1:-}

cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/bench/out/handler-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
tmp=$(mktemp -d /tmp/caddy-backstage-handler.XXXXXX)
cleanup() {
	if [ -n "$REV" ] && [ -d "$tmp/rev" ]; then git -C "$REPO" worktree remove --force "$tmp/rev" >/dev/null 2>&1 || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

names=(new)
go test -c -o "$OUT/new.test" . >/dev/null
if [ -n "$REV" ]; then
	git worktree add --detach "$tmp/rev" "$REV" >/dev/null 2>&1
	(cd "$tmp/rev" && go test -c -o "$OUT/old.test" .) >/dev/null
	names=(old new)
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(go env GOVERSION)"
echo "bench: $BENCH, $ROUNDS rounds x $BENCHTIME$( [ -n "$REV" ] && echo ", $REV (old) and the working tree (new) interleaved")"
for ((r = 1; r <= ROUNDS; r++)); do
	for n in "${names[@]}"; do
		"$OUT/$n.test" -test.run '^$' -test.bench "$BENCH" -test.benchmem -test.count 1 -test.benchtime "$BENCHTIME" |
			grep '^Benchmark' >>"$OUT/$n.txt"
	done
	printf 'round %d/%d done\r' "$r" "$ROUNDS" >&2
done
echo >&2

# Per benchmark: median, fastest, slowest ns/op, allocs; minus the median of
# the pass-through benchmark of the same family, and the issue's targets.
summarise() {
	awk '
	function median(list,   n, a, i, j, t) {
		n = split(list, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function extreme(list, want,   n, a, i, m) {
		n = split(list, a, " "); m = a[1]
		for (i = 2; i <= n; i++) if ((want == "min" && a[i] + 0 < m + 0) || (want == "max" && a[i] + 0 > m + 0)) m = a[i]
		return m
	}
	{
		name = $1; sub(/-[0-9]+$/, "", name)
		if (!(name in ns)) order[++count] = name
		for (i = 2; i < NF; i++) {
			if ($(i + 1) == "ns/op") ns[name] = ns[name] " " $i
			if ($(i + 1) == "allocs/op") allocs[name] = $i
		}
	}
	END {
		for (k = 1; k <= count; k++) {
			name = order[k]
			if (name ~ /pass-through$|PassThrough$/) base = median(ns[name])
		}
		printf "| benchmark | median ns/op | fastest | slowest | over pass-through | allocs/op | target |\n|---|---:|---:|---:|---:|---:|---|\n"
		for (k = 1; k <= count; k++) {
			name = order[k]; m = median(ns[name]); over = m - base
			target = ""
			if (name ~ /pass-through$|PassThrough$/) { over = 0 }
			else if (name ~ /(open|Open)$/ || name ~ /(static|StaticToken)$/) target = (over <= 2000 && allocs[name] <= 10) ? "<= 2 us, <= 10 allocs: met" : "<= 2 us, <= 10 allocs: NOT met"
			else if (name ~ /(user-token-cached|UserTokenCached)$/) target = (over <= 3000 && allocs[name] <= 10) ? "<= 3 us, <= 10 allocs: met" : "<= 3 us, <= 10 allocs: NOT met"
			printf "| %s | %.0f | %.0f | %.0f | %.0f | %s | %s |\n", name, m, extreme(ns[name], "min"), extreme(ns[name], "max"), over, allocs[name], target
		}
	}' "$1"
}

for n in "${names[@]}"; do
	[ -n "$REV" ] && echo && echo "$n ($([ "$n" = old ] && echo "$REV" || echo "working tree")):"
	summarise "$OUT/$n.txt" | tee "$OUT/$n-summary.md"
done
if [ -n "$REV" ]; then
	bs=$(command -v benchstat || true)
	[ -z "$bs" ] && [ -x /tmp/bin/benchstat ] && bs=/tmp/bin/benchstat
	if [ -n "$bs" ]; then echo && "$bs" "$OUT/old.txt" "$OUT/new.txt" | tee "$OUT/benchstat.txt"; fi
fi
echo "raw samples: $OUT"
