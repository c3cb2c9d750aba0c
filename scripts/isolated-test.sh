#!/usr/bin/env bash
# Runs the package tests in a private network namespace (Linux, root or
# unprivileged user namespaces). The integration tests do not need it to
# avoid each other: each test binary reserves free ports for its in-process
# Caddy (admin API and listener, see testhelpers_test.go). It still keeps a
# run away from anything else on the machine's loopback, e.g. a process that
# takes a reserved port before the test Caddy binds it. Arguments go to the
# test binary, e.g.:
#
#   scripts/isolated-test.sh -test.run 'Security|Fault|Fuzz|WebSocket|Hostile' -test.v
#   RACE=1 scripts/isolated-test.sh -test.count=1
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)/backstageproxy.test
flags=()
[ "${RACE:-}" = 1 ] && flags+=(-race)
go test "${flags[@]}" -c -o "$bin" .
if [ "$(id -u)" = 0 ]; then
	exec unshare --net sh -c 'ip link set lo up && exec "$0" "$@"' "$bin" "$@"
fi
exec unshare --user --map-root-user --net sh -c 'ip link set lo up && exec "$0" "$@"' "$bin" "$@"
