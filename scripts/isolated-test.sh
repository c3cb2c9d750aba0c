#!/usr/bin/env bash
# Runs the package tests in a private network namespace (Linux, root or
# unprivileged user namespaces), so that integration tests, which use the
# fixed loopback ports 2999 (admin) and 9080 (listener), cannot collide with
# another `go test` running on the same machine. Arguments go to the test
# binary, e.g.:
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
