/*
Package rabbitmq is a Watermill Publisher and Subscriber for RabbitMQ on amqp091-go.

It replaces watermill-amqp's publisher and subscriber for micromessaging: one channel
per Publisher with pipelined publisher confirms, mandatory returns reported as errors,
up to Prefetch messages in flight per subscription with coalesced acks, delayed
requeues instead of hot loops, run-time prefetch and pause/resume, and reconnects that
redeclare the topology. Messages are converted by a Marshaler (default wire.Codec, the
micromessaging v3 wire format; watermill-amqp v3 marshalers fit too).

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{Name: "billing-pub"})
	if err != nil { ... }
	if err := conn.Connect(ctx); err != nil { ... } // a wrong URL or credentials fail here
	defer conn.Close()
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Mandatory: true})
	...
	err = pub.Publish("q.requests.billing.charge", msg) // nil = confirmed by the broker

# Connections and reconnects

A Connection is one AMQP connection. NewConnection does no I/O; Connect dials once,
synchronously, and returns the error when that fails (so a wrong URL, refused
credentials or an unreachable broker are reported to the caller, not retried in the
background). After a successful Connect a supervisor goroutine watches the connection;
when it is lost (network, broker restart, `rabbitmqctl close_connection`) it re-dials
with capped exponential backoff and jitter (ConnectionConfig.BackoffMin..BackoffMax)
until it succeeds or Close is called. State reports Disconnected, Connecting, Connected
or Closed; StateChanges is a latest-value channel of the same; the gauge
micromessaging_rabbitmq_connection_state{connection=Name} exports it.

Publishers and Subscribers open their channels on the Connection and, after a reconnect,
open new ones, declare their topology again and carry on. Connection.Channel gives a raw
channel for what they do not cover (an exclusive lock queue held while the connection
lives).

Use separate Connections for publishing and consuming: when the broker throttles or
blocks a publishing connection (flow control, memory or disk alarm), consumers and their
acks on another connection keep going. ConnectionConfig.Name is shown by the broker
(rabbitmqctl list_connections client_properties) and labels the metrics.

# Publishing (confirms, mandatory, outages)

A Publisher uses one channel at a time, in confirm mode unless NoConfirm (plus a second
one without confirms once PublishUnconfirmed is used); no channel is opened per publish. Concurrent Publish calls write to it one after the other and wait
for their confirms concurrently, so many publishes are in flight at once (pipelined
confirms; amqp091's reader goroutine wakes each caller when its confirm arrives). Publish
returns when the broker confirmed each of its messages: nil, or an error per message
(ErrNacked for basic.nack). The writes of publishes made at the same time are sent to
the socket together (one system call for a burst instead of one per message).
Throughput grows with the number of concurrent callers (or
messages per call), since each caller has its messages in flight until they are
confirmed.

With Mandatory, a message that no queue is bound for is returned by the broker
(basic.return) and its Publish fails with ErrUnroutable (wrapped; errors.Is works).
Returns are matched to messages by MessageId (wire.Codec sets it to the message UUID; the
Publisher sets it when a Marshaler leaves it empty), so two messages with the same UUID
in flight at once on one Publisher cannot be told apart. With NoConfirm there is nothing
to wait for: Publish returns once its messages are written, and returns are only logged
and counted.

PublishUnconfirmed is for callers that learn the outcome another way (an RPC client
waits for the reply): it writes one message on a second channel of the Publisher, without
confirms, and returns; with Mandatory, a return of that message calls the caller's
onReturn function, and a channel lost after the write closes the returned lost channel
(the message may or may not have reached the broker). It spares the broker a confirm
and the caller a wake-up per message.

During an outage Publish waits for the connection, bounded by the message's context and
by Close; it returns ErrNotConnected if Connect never succeeded. Messages written on a
channel that dies before their confirm arrives are published again, transparently, on
the next channel: a nil error always means "confirmed", and a message may then reach
its queue twice (at-least-once). A channel closed by a broker error (e.g. 404 for a
missing exchange) fails its pending publishes with that error instead.

# Consuming (prefetch, acks, pause/resume, poison messages)

Subscribe declares the topology of a topic, starts a consumer on a channel of its own
and returns the message channel. The broker sends up to Prefetch unacked messages ahead,
and all of them can be in handlers at once: a message.Router runs each in its own
goroutine. Acks and nacks flow back per message. Acks are coalesced: when every delivery
up to some tag is settled, one basic.ack(multiple) covers them, sent at once when half
the prefetch window is settled and otherwise within about 2 ms; acks behind a slow
message are sent one by one when they pile up, so the window does not stall; everything
pending is sent before a consumer is cancelled or its channel closed.

A nacked message is requeued after SubscriberConfig.NackDelay (default 250 ms, with
jitter), so a failing message never spins in a hot loop; bounded retries and dead
letters are the business of the layer above (patterns/tasks). A delivery the Marshaler
cannot decode is rejected without requeue at once (dead-lettered if its queue has a
dead-letter exchange, dropped otherwise), logged, and counted in
micromessaging_rabbitmq_undecodable_total.

SubscribeFunc is Subscribe with a callback instead of the message channel: the
subscription's goroutine calls it with each message in delivery order, which saves a
goroutine hand-off per message (the RPC client's reply handler uses it); the callback
must not block.

Handle runs a Watermill handler function on a topic without a router: messages go from
the subscription to worker goroutines kept for the subscription's lifetime (as many as
messages were in flight at once), and the worker that ran a message settles it (nil
error: ack; error or panic: nack) without a watcher goroutine. Compared with a router
handler on Subscribe, that spares each message two goroutine hand-offs, a goroutine
start with its stack growth, and the watcher; the router facade serves its RPC routes
this way.

SetPrefetch changes the prefetch at run time. RabbitMQ applies a per-consumer prefetch to
new consumers only, so the running consumer is replaced; messages already received are
handed out as usual. After a decrease the new consumer starts once fewer messages than
the new prefetch are in flight, so the number in flight never rises above the old limit
and falls to the new one. (A channel-wide "global" prefetch would apply at once, but
quorum queues refuse it.) Pause cancels the consumers (basic.cancel): when it returns no new
message is handed out, messages received but not handed out are requeued at once, and
messages in handlers can still be acked or nacked. Resume consumes again. *Subscriber
satisfies the qos.FlowControl interface.

When the broker cancels a consumer (its queue was deleted), the subscription never
emits an empty message: it logs, declares the queue again after a backoff and resumes
on the same channel (so the messages in handlers can still be acked). When the channel
or connection is lost, messages in handlers cannot be acked any more: the broker
redelivers them, their contexts are cancelled and their Ack is ignored; the subscription
reconnects, declares its topology again and resumes.

A message's context is cancelled once it is acked or nacked. The message channel is
closed when the Subscribe ctx ends or on Close, right after consuming stops; then up to
CloseTimeout is given to the handlers to settle the messages they hold, pending acks are
sent and the channel is closed (messages still unsettled go back to the queue, and their
contexts are cancelled).

# Topology

Queue describes a queue with its bindings; SubscriberConfig.Queue maps a topic to one
(default: a durable queue named like the topic) and SubscriberConfig.Declare adds the
exchanges to declare first. Typical micromessaging queues:

	// request/task queue: durable, x-expires 24 h (compatible with a Node peer's)
	rabbitmq.Queue{Name: wire.RequestQueue(svc, route), Durable: true, Args: wire.RequestQueueArgs()}
	// reply queue: exclusive, consumed with SubscriberConfig.NoAck
	rabbitmq.Queue{Name: wire.ReplyQueue(svc, id), Exclusive: true}
	// listen queue: exclusive, bound to the x.pubSub topic exchange with a pattern
	rabbitmq.Queue{Name: wire.ListenQueue(svc, id), Exclusive: true,
		Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: "billing.*"}}}

Declarations are idempotent and are repeated on every new channel (after reconnects).
A queue that exists with other settings makes Subscribe fail with the broker's 406
PRECONDITION_FAILED; integer arguments match whatever width they were declared with.
SubscribeInitialize declares without consuming, so that messages published before the
first Subscribe are kept. PublisherConfig.Declare declares the exchange a Publisher
publishes to.

# Metrics

With a prometheus.Registerer (nil: no metrics), under micromessaging_rabbitmq_*:
connection_state, connection_blocked and reconnects_total {connection};
published_total, confirmed_total, returned_total, publish_nacked_total,
publish_retried_total {publisher}; deliveries_total, acked_total, nacked_total,
undecodable_total {subscriber}. Label values are the Name fields of the configs (a
closed set chosen by the program). Several components on one registry share the
collectors.

# Concurrency

Connection, Publisher and Subscriber are safe for concurrent use. Publish may be called
from many goroutines (that is how confirms pipeline). Messages from one subscription are
handed out in delivery order but are handled concurrently, so processing order is not
guaranteed unless Prefetch is 1. Every goroutine the package starts ends with Close (or
the Subscribe ctx); none is started by a constructor.
*/
package rabbitmq
