#!/usr/bin/env bash
# Wire compatibility with the Node micromessaging library (v3.2.9), checked against its
# Go stand-in, the conformance kit (CONFORMANCE_DIR, default <repo>/../shared/conformance):
#
#   1. Node client -> Go server: examples/interop serves the contract's routes as a
#      service with a unique name; `conformance check -target <name>` runs the Node
#      client's checks against it. Every check in EXPECTED_CHECKS must pass; the other
#      checks are reported as pending (they land with later work) and do not fail.
#   2. Go client -> Node server: `conformance serve -name <unique>` serves the contract;
#      `interop client -target <name>` runs the Go client's checks, and examples/events
#      and examples/tasks emit events and send tasks to it (its `events` and `workCount`
#      routes must show them); all must pass.
#   3. Mixed election: Go electors and `conformance elect` instances agree on one leader,
#      and again after the leader dies on either side (scripts/election-mixed.sh).
#
# The kit's directory is only read: the kit is built into a temporary directory.
# Env: RABBIT_URI (default amqp://guest:guest@127.0.0.1:5672/), CONFORMANCE_DIR,
# EXPECTED_CHECKS (space separated), READY_TIMEOUT (seconds, default 60).
# Exit 0 only when every required check passed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$REPO/../shared/conformance}
EXPECTED_CHECKS=${EXPECTED_CHECKS:-echo headers error stream unroutable timeout expired big-body tasks events status}
READY_TIMEOUT=${READY_TIMEOUT:-60}
export RABBIT_URI=${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/}
command -v go >/dev/null 2>&1 || export PATH=$PATH:/usr/local/go/bin

# Checks of the kit that are not required, and why (none today: every check is required;
# a check the kit adds later shows up as pending until it is added to EXPECTED_CHECKS).
declare -A PENDING_WHY=()

say() { echo "conformance.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}

[[ -d $CONFORMANCE_DIR ]] || die "no conformance kit at $CONFORMANCE_DIR (set CONFORMANCE_DIR)"
CONFORMANCE_DIR=$(cd "$CONFORMANCE_DIR" && pwd)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/conformance.XXXXXX")
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			# Give it a moment to close its connections and delete its queues.
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.5
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

unique() { echo "$1-$(date +%s)-$RANDOM$RANDOM"; }

# wait_for FILE PATTERN PID WHAT: until FILE holds a line matching PATTERN, failing when
# PID exits first or READY_TIMEOUT passes.
wait_for() {
	local file=$1 pattern=$2 pid=$3 what=$4 deadline=$((SECONDS + READY_TIMEOUT))
	until grep -q -- "$pattern" "$file" 2>/dev/null; do
		if ! kill -0 "$pid" 2>/dev/null; then
			sed 's/^/  /' "$file" "$file.err" >&2 2>/dev/null || true
			die "$what exited before it was ready"
		fi
		((SECONDS < deadline)) || die "$what was not ready within ${READY_TIMEOUT}s"
		sleep 0.2
	done
}

say "building the kit from $CONFORMANCE_DIR (read only) and examples/interop"
if ! (cd "$CONFORMANCE_DIR" && go build -o "$TMP/conformance" . 2>"$TMP/build.err"); then
	# The kit's go.sum may lack entries for this Go; let go fetch them without writing there.
	(cd "$CONFORMANCE_DIR" && GOFLAGS=-mod=mod go build -o "$TMP/conformance" .) ||
		{ cat "$TMP/build.err" >&2; die "cannot build the conformance kit"; }
fi
for ex in interop events tasks; do
	(cd "$REPO" && go build -o "$TMP/$ex" "./examples/$ex") || die "cannot build examples/$ex"
done

"$REPO/scripts/rabbitmq.sh" || die "no broker at RABBIT_URI"

failed=0

# 1. Node client (kit) -> Go server (examples/interop).
GO_SERVICE=$(unique gointerop)
say "1/3: Node-like client -> Go service $GO_SERVICE"
"$TMP/interop" serve -name "$GO_SERVICE" >"$TMP/serve.out" 2>"$TMP/serve.out.err" &
PIDS+=($!)
wait_for "$TMP/serve.out" '"event":"ready"' "${PIDS[-1]}" "interop serve"

"$TMP/conformance" check -target "$GO_SERVICE" >"$TMP/check.out" 2>"$TMP/check.err" || true
declare -A RESULT=()
while IFS=' ' read -r name ok; do
	RESULT[$name]=$ok
done < <(sed -n 's/^{"check":"\([^"]*\)".*"ok":\(true\|false\)}$/\1 \2/p' "$TMP/check.out")

echo "required checks: $EXPECTED_CHECKS"
for c in $EXPECTED_CHECKS; do
	case ${RESULT[$c]:-missing} in
	true) echo "  PASS     $c" ;;
	false)
		echo "  FAIL     $c: $(grep -F "\"check\":\"$c\"" "$TMP/check.out")"
		failed=1
		;;
	*)
		echo "  MISSING  $c (the kit reported no such check)"
		failed=1
		;;
	esac
done
pending=()
for c in "${!RESULT[@]}"; do
	[[ " $EXPECTED_CHECKS " == *" $c "* ]] || pending+=("$c")
done
if ((${#pending[@]})); then
	echo "pending checks (reported, not required):"
	for c in $(printf '%s\n' "${pending[@]}" | sort); do
		state=failing
		[[ ${RESULT[$c]} == true ]] && state=passing
		echo "  PENDING  $c ($state): ${PENDING_WHY[$c]:-not in EXPECTED_CHECKS}"
	done
fi
if ((${#RESULT[@]} == 0)); then
	say "the kit printed no check results:"
	sed 's/^/  /' "$TMP/check.out" "$TMP/check.err" >&2
	failed=1
fi
grep -h '^conformance:' "$TMP/check.out" | sed 's/^/  kit summary: /' || true

# 2. Go client (examples/interop) -> Node server (kit).
KIT_SERVICE=$(unique mmkit)
say "2/3: Go client -> Node-like service $KIT_SERVICE"
"$TMP/conformance" serve -name "$KIT_SERVICE" >"$TMP/kit.out" 2>"$TMP/kit.out.err" &
PIDS+=($!)
wait_for "$TMP/kit.out.err" "$KIT_SERVICE serving" "${PIDS[-1]}" "conformance serve"
if "$TMP/interop" client -target "$KIT_SERVICE" >"$TMP/client.out" 2>"$TMP/client.err"; then
	sed 's/^/  /' "$TMP/client.out"
else
	sed 's/^/  /' "$TMP/client.out" "$TMP/client.err"
	echo "  FAIL     Go client against the kit"
	failed=1
fi
for ex in events tasks; do
	if "$TMP/$ex" -against "$KIT_SERVICE" >"$TMP/$ex.out" 2>"$TMP/$ex.err"; then
		sed 's/^/  /' "$TMP/$ex.out"
	else
		sed 's/^/  /' "$TMP/$ex.out" "$TMP/$ex.err"
		echo "  FAIL     Go $ex against the kit"
		failed=1
	fi
done

# 3. Mixed election: Go and Node-like instances of one service.
say "3/3: mixed election (scripts/election-mixed.sh)"
if ! CONFORMANCE_DIR="$CONFORMANCE_DIR" "$REPO/scripts/election-mixed.sh"; then
	echo "  FAIL     mixed election"
	failed=1
fi

if ((failed)); then
	echo "conformance: FAILED"
	exit 1
fi
echo "conformance: every required check passed"
