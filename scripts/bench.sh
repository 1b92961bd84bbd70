#!/usr/bin/env bash
# Library vs raw amqp091-go (`make bench`): for each pair of scenarios runs the raw twin,
# then the library scenario, back to back on the same broker, prints both JSON lines and
#   # ratio <scenario> c=<C> msgs_per_sec=<lib/raw> p99=<lib/raw> ...
# Pairs whose scenarios are not registered in cmd/mmbench yet are skipped with a "# skip"
# line. Lines starting with '#' are context; the others are mmbench JSON results in the
# format of ../shared/bench-baseline.
#
# Env: N (messages or round trips per run, default 20000), SIZE (payload bytes, 256),
# ROUNDS (how many times the whole list runs, 1), RABBIT_URI (broker),
# PAIRS (space-separated "scenario:concurrency[:key=value]" list, default below; the
# optional key=value goes to both sides as -opt, e.g. events:1:listeners=3).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH=$PATH:/usr/local/go/bin
fi
N=${N:-20000}
SIZE=${SIZE:-256}
ROUNDS=${ROUNDS:-1}
URL=${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/}
PAIRS=${PAIRS:-publish:1 publish:16 publish:256 consume:1 rpc:1 rpc:16 events:1 events:1:listeners=3 events:16 tasks:1 tasks:16}

scripts/rabbitmq.sh

dir=$(mktemp -d "${TMPDIR:-/tmp}/mmbench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/mmbench" ./cmd/mmbench
bench() { "$dir/mmbench" -url "$URL" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a; }

registered=" $(bench -list | tr '\n' ' ') "
echo "# $(date -u +%FT%TZ) nproc=$(nproc) loadavg=$(load) $(bench -info) n=$N size=$SIZE"

failed=0
for ((round = 1; round <= ROUNDS; round++)); do
	((ROUNDS == 1)) || echo "# round $round of $ROUNDS"
	for pair in $PAIRS; do
		IFS=: read -r lib c opt <<<"$pair"
		optargs=()
		[[ -z $opt ]] || optargs=(-opt "$opt")
		raw=raw-$lib
		if [[ $registered != *" $lib "* || $registered != *" $raw "* ]]; then
			echo "# skip $lib c=$c: scenario $([[ $registered == *" $lib "* ]] && echo "$raw" || echo "$lib") is not registered"
			continue
		fi
		if ! rawline=$(bench -scenario "$raw" -n "$N" -size "$SIZE" -c "$c" "${optargs[@]}"); then
			echo "# error $raw c=$c failed"
			failed=1
			continue
		fi
		echo "$rawline"
		if ! libline=$(bench -scenario "$lib" -n "$N" -size "$SIZE" -c "$c" "${optargs[@]}"); then
			echo "# error $lib c=$c failed"
			failed=1
			continue
		fi
		echo "$libline"
		printf '%s\n%s\n' "$rawline" "$libline" | bench -compare ${opt:+-note "[$opt]"}
		if [[ $lib == publish ]]; then
			# Each library publisher waits for its own confirm, so C publishers keep at most C
			# messages unconfirmed: also compare with a raw channel limited to that window.
			if refline=$(bench -scenario raw-publish -n "$N" -size "$SIZE" -c "$c" -opt "window=$c"); then
				echo "$refline"
				printf '%s\n%s\n' "$refline" "$libline" | bench -compare -note "[vs raw-publish window=$c]"
			else
				echo "# error raw-publish window=$c failed"
				failed=1
			fi
		fi
	done
done
echo "# done $(date -u +%FT%TZ) loadavg=$(load)"
exit "$failed"
