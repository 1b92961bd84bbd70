#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers AMQP at $RABBIT_URI
# (default amqp://guest:guest@127.0.0.1:5672/).
#
#   - a broker that already answers is reused (and the script prints nothing);
#   - for a local URI (127.0.0.1, localhost, ::1) on the broker's own plain port (5672, or
#     $RABBITMQ_NODE_PORT) an installed rabbitmq-server is started with
#     `rabbitmq-server -detached`; when none is installed and we are root, it is installed
#     first with apt-get;
#   - then it waits (bounded by RABBIT_WAIT seconds, default 120) until the broker answers
#     the AMQP 0-9-1 protocol header with a connection.start frame (a real AMQP check, not
#     just an open port);
#   - a broker on another host, on another port or behind amqps:// that does not answer
#     fails at once: starting the local default broker could not make it answer.
#
# `scripts/rabbitmq.sh --check` only probes (never starts or installs anything) and says
# where it looked. Idempotent; run it from any directory. Exit 0 = the broker answers.
set -euo pipefail

CHECK_ONLY=false
case ${1:-} in
--check) CHECK_ONLY=true ;;
'') ;;
*)
	echo "usage: $0 [--check]" >&2
	exit 2
	;;
esac

URI=${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/}
WAIT=${RABBIT_WAIT:-120}

say() { echo "rabbitmq.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}

# redact hides the password in a URI for messages.
redact() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

# parse_uri sets HOST and PORT from an amqp:// or amqps:// URI.
parse_uri() {
	local uri=$1 scheme rest hostport
	case $uri in
	amqp://*) scheme=amqp PORT=5672 ;;
	amqps://*) scheme=amqps PORT=5671 ;;
	*) die "RABBIT_URI=$(redact "$uri") is not an amqp:// or amqps:// URI" ;;
	esac
	rest=${uri#*://}
	rest=${rest%%/*} # drop /vhost
	rest=${rest%%\?*} # drop ?query
	hostport=${rest##*@} # drop user:pass@
	if [[ $hostport == \[* ]]; then # [ipv6]:port
		HOST=${hostport#\[}
		HOST=${HOST%%\]*}
		local after=${hostport#*\]}
		[[ $after == :* ]] && PORT=${after#:}
	elif [[ $hostport == *:* ]]; then
		HOST=${hostport%%:*}
		PORT=${hostport#*:}
	else
		HOST=$hostport
	fi
	[[ -n $HOST ]] || HOST=127.0.0.1 # amqp:// with no host means localhost (as amqp091-go does)
	[[ -n $PORT ]] || PORT=$([[ $scheme == amqps ]] && echo 5671 || echo 5672)
	[[ $PORT =~ ^[0-9]+$ ]] || die "RABBIT_URI=$(redact "$uri"): port '$PORT' is not a number"
}

# probe succeeds when host:port answers the AMQP 0-9-1 protocol header with a method
# frame on channel 0 carrying connection.start (class 10, method 10). TLS (amqps) cannot
# be spoken from bash, so for amqps only the TCP connect is checked.
probe() {
	local tls=$1
	timeout 5 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		[[ $3 == tls ]] && exit 0
		printf "AMQP\x00\x00\x09\x01" >&3
		reply=$(head -c 11 <&3 | od -An -tx1 | tr -d " \n")
		# frame type 01, channel 0000, 4 size bytes, class 000a, method 000a
		[[ $reply == 010000????????000a000a ]]
	' probe "$HOST" "$PORT" "$tls" 2>/dev/null
}

is_local() {
	case $1 in
	127.0.0.1 | localhost | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
	*) return 1 ;;
	esac
}

parse_uri "$URI"
TLS=plain
[[ $URI == amqps://* ]] && TLS=tls

if probe "$TLS"; then
	$CHECK_ONLY && say "an AMQP broker answers at $(redact "$URI") ($HOST:$PORT)"
	exit 0
fi
$CHECK_ONLY && die "no AMQP broker answers at $(redact "$URI") ($HOST:$PORT)"

if ! is_local "$HOST"; then
	die "no AMQP broker answers at $(redact "$URI") ($HOST:$PORT). It is not a local address, so this script will not start one: start RabbitMQ on $HOST, or set RABBIT_URI to a broker that runs (unset it for the local default amqp://guest:guest@127.0.0.1:5672/)."
fi

# A started rabbitmq-server listens on its configured port (5672 unless RABBITMQ_NODE_PORT
# says otherwise) without TLS: starting it cannot make any other address answer.
NODE_PORT=${RABBITMQ_NODE_PORT:-5672}
if [[ $TLS == tls || $PORT != "$NODE_PORT" ]]; then
	die "no AMQP broker answers at $(redact "$URI") ($HOST:$PORT). A local rabbitmq-server started by this script would listen on plain AMQP port $NODE_PORT, so it will not start one: start your broker on port $PORT, or set RABBIT_URI to amqp://guest:guest@127.0.0.1:$NODE_PORT/ (or unset it)."
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
	if [[ $(id -u) -ne 0 ]]; then
		die "no broker at $HOST:$PORT and rabbitmq-server is not installed. Install it (as root: apt-get update && apt-get install -y rabbitmq-server) and run this script again, or set RABBIT_URI to a running broker."
	fi
	command -v apt-get >/dev/null 2>&1 ||
		die "no broker at $HOST:$PORT, rabbitmq-server is not installed and there is no apt-get: install RabbitMQ by hand, or set RABBIT_URI to a running broker."
	say "installing rabbitmq-server with apt-get (one time)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || die "apt-get update failed; install rabbitmq-server by hand"
	apt-get install -y -qq rabbitmq-server >&2 || die "apt-get install rabbitmq-server failed; install it by hand"
fi
PATH=$PATH:/usr/sbin:/usr/lib/rabbitmq/bin

# The package may have started the broker itself (postinst); only start it when it
# still does not answer. A node that is already booting makes -detached fail: harmless,
# the wait below is what decides.
if ! probe "$TLS"; then
	say "starting RabbitMQ (rabbitmq-server -detached)"
	log=$(mktemp "${TMPDIR:-/tmp}/rabbitmq-start.XXXXXX")
	trap 'rm -f "$log"' EXIT
	rabbitmq-server -detached >"$log" 2>&1 || true
fi

deadline=$((SECONDS + WAIT))
until probe "$TLS"; do
	if ((SECONDS >= deadline)); then
		[[ -n ${log:-} && -s $log ]] && sed 's/^/  rabbitmq-server: /' "$log" >&2
		die "RabbitMQ at $HOST:$PORT did not answer within ${WAIT}s. Look at /var/log/rabbitmq/ (and 'rabbitmq-diagnostics status'), fix it, and run this script again."
	fi
	sleep 1
done
say "RabbitMQ answers at $HOST:$PORT"
exit 0
