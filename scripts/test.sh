#!/usr/bin/env bash
# The whole test suite (`make test`): makes sure RabbitMQ answers (scripts/rabbitmq.sh),
# runs `go vet ./...`, then `go test -race -count=1 ./...` with the broker-restart test
# enabled (MM_TEST_BROKER_RESTART=1), and prints go test's package lines, the output of
# failed and skipped tests, and a last line "N passed, N failed" (", N skipped" if any).
#
# Fails when go vet or any test fails, when a package does not build, and when any test
# was skipped: a full run must run everything (use `go test -short ./...` for a quick
# run without the broker; that is not this script).
#
# Arguments replace the package list (default ./...), e.g. scripts/test.sh ./wire/...
# Env: RABBIT_URI (broker), MM_TEST_BROKER_RESTART (default 1), TEST_TIMEOUT (go test -timeout, default 10m),
# TEST_LOG_DIR (where the raw `go test -json` log is kept; default a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH=$PATH:/usr/local/go/bin
fi

scripts/rabbitmq.sh

# The transport's broker-restart test stops and starts the broker: on by default here.
# MM_TEST_BROKER_RESTART=0 turns it off, and then it is reported as skipped (exit 1).
export MM_TEST_BROKER_RESTART=${MM_TEST_BROKER_RESTART:-1}
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(./...)

logdir=${TEST_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mm-test.XXXXXX")}
mkdir -p "$logdir"
log=$logdir/go-test.json

echo "== go vet ${pkgs[*]}"
if ! go vet "${pkgs[@]}"; then
	echo "FAIL: go vet found problems (above); fix them first, tests not run"
	exit 1
fi

# Build the reporter before the run so that its own build problems are not mistaken
# for test results.
go build -o "$logdir/testreport" ./internal/testreport

# The broker-restart test disturbs every test that talks to the broker, and go test runs
# packages in parallel: it runs alone, after everything else, in the same report.
serial='^TestBrokerRestart$'
run_tests() {
	local rc=0
	go test -json -race -count=1 -timeout "${TEST_TIMEOUT:-10m}" -skip "$serial" "${pkgs[@]}" 2>&1 || rc=1
	if go list "${pkgs[@]}" 2>/dev/null | grep -qx 'github.com/micromessaging/micromessaging/rabbitmq'; then
		go test -json -race -count=1 -timeout "${TEST_TIMEOUT:-10m}" -run "$serial" ./rabbitmq 2>&1 || rc=1
	fi
	return $rc
}

echo "== go test -race -count=1 ${pkgs[*]} (then $serial alone)"
set +e
run_tests |
	tee "$log" | "$logdir/testreport" -log "$log"
codes=("${PIPESTATUS[@]}")
set -e
rm -f "$logdir/testreport"
# go test's own exit code counts too (e.g. a failure the reporter could not attribute).
if ((codes[2] != 0)); then
	exit 1
fi
if ((codes[0] != 0)); then
	echo "go test exited ${codes[0]} although no test failed; see $log"
	exit 1
fi
[[ -n ${TEST_LOG_DIR:-} ]] || rm -rf "$logdir"
