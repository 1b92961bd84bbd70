package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// ErrUnroutable: no queue exists for the task (nobody ever served the route, or its
// request queue expired). It is wire.ErrUnroutable; match with errors.Is.
var ErrUnroutable = wire.ErrUnroutable

// ErrInvalid: an empty service or route, a reserved header name, a body that cannot be
// encoded.
var ErrInvalid = errors.New("tasks: invalid argument")

// ErrMaxDuration is the failure recorded (in HeaderError) for a task whose handler ran
// longer than WorkerConfig.MaxDuration.
var ErrMaxDuration = errors.New("tasks: handler exceeded MaxDuration")

// ErrPanic wraps the value of a panic in a task handler.
var ErrPanic = errors.New("tasks: handler panicked")

// Headers the worker sets on the copies it publishes to retry and dead-letter queues
// (and that Replay maintains). Values are decimal strings or text.
const (
	// HeaderAttempt is the number of the attempt a delivery is: absent (or invalid) on
	// the first delivery, which is attempt 1; "2" on the first retry, and so on. A dead
	// letter carries the number of the last attempt made. Read it with Attempt.
	HeaderAttempt = "x-mm-attempt"
	// HeaderError is the error of the last failed attempt (at most 1 KiB).
	HeaderError = "x-mm-error"
	// HeaderReplays counts how many times Replay moved the task out of its dead-letter
	// queue.
	HeaderReplays = "x-mm-replays"
)

// RetryQueue returns the delay queue of a task that failed attempt n of route:
// q.retry.<service>.<route>.<n>. It is durable, is never consumed, and has
// x-dead-letter-exchange "" and x-dead-letter-routing-key q.requests.<service>.<route>:
// each message carries its delay as its expiration and goes back to the request queue
// when it expires. One queue per attempt number keeps the delays of the messages in a
// queue equal, so the broker (which expires messages only at the head of a queue) never
// holds a short delay behind a long one.
func RetryQueue(service, route string, n int) string {
	return "q.retry." + service + "." + route + "." + strconv.Itoa(n)
}

// DeadQueue returns the dead-letter queue of route: q.dead.<service>.<route>, durable,
// no arguments, never consumed by the library. Inspect it with the management UI or
// `rabbitmqadmin get queue=...`; move its messages back with Replay.
func DeadQueue(service, route string) string { return "q.dead." + service + "." + route }

// retryQueueArgs are the arguments of RetryQueue(service, route, n).
func retryQueueArgs(service, route string) amqp.Table {
	return amqp.Table{
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": wire.RequestQueue(service, route),
	}
}

// Attempt returns the attempt number of a task delivery (1 for the first one). See
// HeaderAttempt.
func Attempt(msg *message.Message) int {
	n, err := strconv.Atoi(msg.Metadata.Get(HeaderAttempt))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// ChannelOpener opens a raw AMQP channel that the caller owns and closes.
// *rabbitmq.Connection satisfies it. The worker uses it to declare its retry and
// dead-letter queues (Watermill has no interface for declaring a queue nobody
// consumes); Replay uses it to move dead letters.
type ChannelOpener interface {
	Channel(ctx context.Context) (*amqp.Channel, error)
}

func encodeBody(body any) ([]byte, error) {
	switch b := body.(type) {
	case json.RawMessage:
		if b != nil {
			return b, nil
		}
	case []byte:
		if b != nil {
			return b, nil
		}
	default:
		p, err := wire.JSON(body)
		if err != nil {
			return nil, fmt.Errorf("%w: body: %v", ErrInvalid, err)
		}
		return p, nil
	}
	return wire.JSON(nil)
}

// reservedHeader reports header names that the codec maps to AMQP properties or __mms.
func reservedHeader(k string) bool {
	return k == "" || strings.HasPrefix(k, wire.MetaPrefix) || strings.HasPrefix(k, wire.MetaMMSPrefix) || k == wire.HeaderMMS
}
