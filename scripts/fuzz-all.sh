#!/usr/bin/env bash
# Runs every fuzz target of the module in turn, each for FUZZTIME (default
# 2m). New crashers are written by Go to testdata/fuzz/<Name>/; commit them
# as seeds once the bug they show is fixed or reported.
#
#   scripts/fuzz-all.sh            # 2 minutes each
#   FUZZTIME=30s scripts/fuzz-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# package:target, one per fuzz target
for entry in .:FuzzAdapt .:FuzzPathGuard .:FuzzUpstreamRewrite .:FuzzRequestFilter \
	./internal/appconfig:FuzzLoadBackstageConfig \
	./internal/identity:FuzzBearerAndToken ./internal/identity:FuzzPluginClaimsImpersonation \
	./internal/policy:FuzzAllowPatterns; do
	pkg=${entry%%:*} target=${entry#*:}
	echo "== $pkg $target (${FUZZTIME:-2m})"
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "${FUZZTIME:-2m}" "$pkg"
done
