#!/usr/bin/env bash
# A mixed leader election: Go instances (examples/election) together with Node-like
# instances (`conformance elect` from the conformance kit, a stand-in for Node
# micromessaging v3.2.9 verified against the real library) in one service must agree on
# one leader, and agree again after the leader dies, whichever side it was on.
#
#   1. KIT_INSTANCES kit electors start alone and agree (a kit instance leads);
#   2. GO_INSTANCES Go electors join: everyone follows the kit leader;
#   3. kill -9 of the kit leader: everyone agrees on a new leader (a Go one: Go
#      followers retry the lock every 500 ms, the kit only after its election timeout);
#   4. kill -9 of that (Go) leader: the survivors agree again;
#   5. SIGTERM of the next leader (a clean stop: a Go leader releases the lock and
#      announces it): the survivors agree again.
# Each step prints how long the agreement took (from the kill to the last survivor
# reporting the new leader, by the "at" timestamps the electors print).
#
# Needs the kit (CONFORMANCE_DIR, default <repo>/../shared/conformance; only read: it is
# built into a temporary directory), Go and a broker (RABBIT_URI). Not part of go test.
# Env: GO_INSTANCES (default 3), KIT_INSTANCES (default 2), KIT_HEARTBEAT (default 1s),
# KIT_ELECTION_TIMEOUT (default 1.5s), GO_HEARTBEAT (1s), GO_RETRY (500ms),
# AGREE_TIMEOUT (seconds per step, default 60). Exit 0 when every step agreed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$REPO/../shared/conformance}
GO_INSTANCES=${GO_INSTANCES:-3}
KIT_INSTANCES=${KIT_INSTANCES:-2}
KIT_HEARTBEAT=${KIT_HEARTBEAT:-1s}
KIT_ELECTION_TIMEOUT=${KIT_ELECTION_TIMEOUT:-1.5s}
GO_HEARTBEAT=${GO_HEARTBEAT:-1s}
GO_RETRY=${GO_RETRY:-500ms}
AGREE_TIMEOUT=${AGREE_TIMEOUT:-60}
export RABBIT_URI=${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/}
command -v go >/dev/null 2>&1 || export PATH=$PATH:/usr/local/go/bin

say() { echo "election-mixed.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}
((GO_INSTANCES >= 2 && KIT_INSTANCES >= 1)) || die "need GO_INSTANCES >= 2 and KIT_INSTANCES >= 1"
[[ -d $CONFORMANCE_DIR ]] || die "no conformance kit at $CONFORMANCE_DIR (set CONFORMANCE_DIR)"
CONFORMANCE_DIR=$(cd "$CONFORMANCE_DIR" && pwd)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/election-mixed.XXXXXX")
declare -A PID=() SIDE=() OUT=() # instance id -> pid, go|kit, output file
STARTED=()                        # pids, for cleanup
cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${STARTED[@]}"; do
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.3
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building the kit from $CONFORMANCE_DIR (read only) and examples/election"
if ! (cd "$CONFORMANCE_DIR" && go build -o "$TMP/conformance" . 2>"$TMP/build.err"); then
	(cd "$CONFORMANCE_DIR" && GOFLAGS=-mod=mod go build -o "$TMP/conformance" .) ||
		{ cat "$TMP/build.err" >&2; die "cannot build the conformance kit"; }
fi
(cd "$REPO" && go build -o "$TMP/election" ./examples/election) || die "cannot build examples/election"
"$REPO/scripts/rabbitmq.sh" || die "no broker at RABBIT_URI"

SERVICE="mmmixed-$(date +%s)-$RANDOM"
now_ms() { date +%s%3N; }

# start SIDE N: starts N instances of SIDE (go|kit) and records their ids.
start() {
	local side=$1 n=$2 k out pid id deadline
	for ((k = 0; k < n; k++)); do
		out="$TMP/$side-$RANDOM$RANDOM.out"
		if [[ $side == kit ]]; then
			"$TMP/conformance" elect -service "$SERVICE" -heartbeat "$KIT_HEARTBEAT" \
				-election-timeout "$KIT_ELECTION_TIMEOUT" >"$out" 2>"$out.err" &
		else
			"$TMP/election" -service "$SERVICE" -heartbeat "$GO_HEARTBEAT" -retry "$GO_RETRY" >"$out" 2>"$out.err" &
		fi
		pid=$!
		STARTED+=("$pid")
		deadline=$((SECONDS + AGREE_TIMEOUT))
		until id=$(sed -n 's/.*"event":"joined".*"self":"\([^"]*\)".*/\1/p; s/.*"self":"\([^"]*\)".*"event":"joined".*/\1/p' "$out" | head -1) && [[ -n $id ]]; do
			kill -0 "$pid" 2>/dev/null || { cat "$out.err" >&2; die "$side elector exited before joining"; }
			((SECONDS < deadline)) || die "$side elector did not join"
			sleep 0.1
		done
		PID[$id]=$pid SIDE[$id]=$side OUT[$id]=$out
	done
}

# known ID: the leader instance ID last reported, and when (ms epoch): "leader at".
known() {
	local line
	line=$(grep '"event":"leader"' "${OUT[$1]}" | tail -1) || true
	[[ -n $line ]] || return 0
	echo "$(sed -n 's/.*"leader":"\([^"]*\)".*/\1/p' <<<"$line") $(sed -n 's/.*"at":\([0-9]*\).*/\1/p' <<<"$line")"
}

# agree SINCE_MS WHAT: waits until every live instance reports the same live leader, then
# prints the step's result and sets LEADER.
agree() {
	local since=$1 what=$2 deadline=$((SECONDS + AGREE_TIMEOUT)) id leader at latest ok
	while :; do
		ok=1 leader="" latest=0
		for id in "${!PID[@]}"; do
			read -r l at <<<"$(known "$id")" || true
			if [[ -z ${l:-} || ( -n $leader && $l != "$leader" ) ]]; then
				ok=0
				break
			fi
			leader=$l
			((at > latest)) && latest=$at
		done
		if ((ok)) && [[ -n ${PID[$leader]:-} ]]; then
			LEADER=$leader
			printf '  %-44s leader %s (%s) agreed by all %d after %s s\n' "$what:" "${leader:0:8}" "${SIDE[$leader]}" \
				"${#PID[@]}" "$(awk -v d=$((latest - since)) 'BEGIN { printf "%.2f", (d < 0 ? 0 : d) / 1000 }')"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			say "$what: no agreement within ${AGREE_TIMEOUT}s:"
			for id in "${!PID[@]}"; do
				say "  ${SIDE[$id]} ${id:0:8} knows: $(known "$id")"
			done
			exit 1
		fi
		sleep 0.1
	done
}

# stop_leader ID SIGNAL: signals instance ID and forgets it; sets T to the time (ms).
stop_leader() {
	local id=$1 sig=$2
	T=$(now_ms)
	kill "-$sig" "${PID[$id]}"
	{ wait "${PID[$id]}"; } 2>/dev/null || true
	unset "PID[$id]"
}

echo "mixed election in service $SERVICE: $GO_INSTANCES Go + $KIT_INSTANCES kit instances" \
	"(kit -heartbeat $KIT_HEARTBEAT -election-timeout $KIT_ELECTION_TIMEOUT; Go -heartbeat $GO_HEARTBEAT -retry $GO_RETRY)"
t=$(now_ms)
start kit "$KIT_INSTANCES"
agree "$t" "1. kit instances alone"
[[ ${SIDE[$LEADER]} == kit ]] || die "expected a kit leader at first"

t=$(now_ms)
start go "$GO_INSTANCES"
agree "$t" "2. Go instances joined"

stop_leader "$LEADER" KILL
agree "$T" "3. kit leader killed (kill -9)"

side=${SIDE[$LEADER]}
[[ $side == go ]] || say "note: a kit instance leads after step 3"
stop_leader "$LEADER" KILL
agree "$T" "4. $side leader killed (kill -9)"

if ((${#PID[@]} >= 2)); then
	side=${SIDE[$LEADER]}
	stop_leader "$LEADER" TERM
	agree "$T" "5. $side leader stopped cleanly (SIGTERM)"
fi
echo "election-mixed: every step agreed on one leader"
