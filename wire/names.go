package wire

import (
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Protocol constants (WIRE.md).
const (
	// EventExchange is the topic exchange every event goes to (durable, not auto-delete).
	EventExchange = "x.pubSub"
	// ContentType is the content type of every message. A Node peer rejects any other.
	ContentType = "application/json"
	// GzipThreshold: bodies longer than this many bytes are gzipped on send
	// (ContentEncoding "gzip"); a body of exactly GzipThreshold bytes is not.
	GzipThreshold = 1_000_000
	// RequestQueueExpiresMs is the x-expires argument of request/task queues (24 h).
	RequestQueueExpiresMs = 86_400_000
	// HeaderIDRequest is the AMQP header (and Watermill metadata key) that carries the
	// request id of requests, tasks and replies.
	HeaderIDRequest = "idRequest"
	// HeaderMMS is the AMQP header that carries the __mms field table. It is never a
	// Watermill metadata key: its fields appear as mms.* keys.
	HeaderMMS = "__mms"
)

// ErrUnroutable: a mandatory publish came back from the broker (basic.return).
// rabbitmq.ErrUnroutable, rpc.ErrUnroutable, tasks.ErrUnroutable are this same value.
var ErrUnroutable = errors.New("micromessaging: unroutable: no queue is bound for this message")

// RequestQueue returns the request/task queue of a route: q.requests.<service>.<route>.
func RequestQueue(service, route string) string { return "q.requests." + service + "." + route }

// ReplyQueue returns the reply queue of an instance: q.replyQueue.<service>.<instanceId>.
func ReplyQueue(service, instanceID string) string {
	return "q.replyQueue." + service + "." + instanceID
}

// ListenQueue returns the queue of one event listen: q.pubSub.<service>.<id>.
func ListenQueue(service, id string) string { return "q.pubSub." + service + "." + id }

// LockQueue returns the election lock queue of a service: internal.<service>.lock.
func LockQueue(service string) string { return "internal." + service + ".lock" }

// EventKey returns the routing key of an event: <target>.<route>.
func EventKey(target, route string) string { return target + "." + route }

// RequestQueueArgs returns the arguments request/task queues are declared with:
// {"x-expires": int32(86400000)}, as the Node library declares them. A fresh map on every
// call, so callers may modify it.
func RequestQueueArgs() amqp.Table {
	return amqp.Table{"x-expires": int32(RequestQueueExpiresMs)}
}
