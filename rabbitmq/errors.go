package rabbitmq

import (
	"errors"

	"github.com/micromessaging/micromessaging/wire"
)

var (
	// ErrUnroutable: a mandatory publish came back from the broker (basic.return): no
	// queue is bound for its routing key. Publish returns it wrapped; match it with
	// errors.Is. It is the same value as wire.ErrUnroutable.
	ErrUnroutable = wire.ErrUnroutable

	// ErrClosed: the Connection, Publisher or Subscriber was closed.
	ErrClosed = errors.New("rabbitmq: closed")

	// ErrNotConnected: Connection.Connect has not succeeded yet, so there is no
	// connection to wait for. (During an outage after a successful Connect, callers wait
	// for the reconnect instead of getting this error.)
	ErrNotConnected = errors.New("rabbitmq: not connected: Connection.Connect has not succeeded")

	// ErrNacked: the broker answered a publish with basic.nack (it could not take
	// responsibility for the message, e.g. a queue overflow with reject-publish). The
	// message may be published again.
	ErrNacked = errors.New("rabbitmq: publish nacked by the broker")
)
