// Package events emits and listens to micromessaging v3 events: messages on the
// x.pubSub topic exchange with routing key <target>.<route>, each delivered to every
// listening instance. It speaks the Node library's wire format in both directions: Node
// listeners receive Go events and Go listeners receive Node events.
//
// The package knows Watermill (message.Publisher, message.Subscriber, message.Router)
// and package wire; the caller builds the transport (usually package rabbitmq) and
// wires it in, as router does.
//
// # Emitting
//
// Bus.Emit publishes to x.pubSub with routing key <target>.<route>, not mandatory,
// __mms an empty table, user headers only (no idRequest), transient unless
// Config.Persistent, and returns once the broker confirmed it. Events that match no bound queue are dropped by the broker, as with
// Node. The publisher must publish to x.pubSub with confirms:
//
//	pub, _ := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{
//		Exchange: wire.EventExchange,
//		Declare:  &rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true},
//	})
//
// # Listening
//
// Bus.Listen(target, pattern, h) adds a consumer handler to the Router (running or
// not). Like Node, each listen has its own queue q.pubSub.<service>.<uuid>, exclusive
// to the connection, bound to x.pubSub with <target>.<pattern>; "*" matches one word
// and "#" zero or more, so every listening instance gets its own copy of each event.
// The queue is also auto-delete, so the broker removes it when the listener stops
// (Node deletes it explicitly). Events emitted while no queue is bound, or while the
// transport reconnects, are lost, as with Node.
//
// The subscriber consumes the topic it is given as a queue name and must declare that
// queue as Bus.Queue(topic) describes:
//
//	var bus *events.Bus
//	sub, _ := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
//		Declare: []rabbitmq.Exchange{{Name: wire.EventExchange, Kind: "topic", Durable: true}},
//		Queue: func(topic string) rabbitmq.Queue {
//			q, _ := bus.Queue(topic)
//			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive,
//				AutoDelete: q.AutoDelete, Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
//		},
//	})
//	bus, _ = events.New(events.Config{Service: "shop", Publisher: pub, Subscriber: sub, Router: router})
//	l, err := bus.Listen("orders", "created.*", func(msg *message.Message) error { ... })
//
// A listener added while the Router runs is started by Config.StartHandlers (default:
// Router.RunHandlers(context.Background()), so stop such a Router with Close, or pass a
// StartHandlers that uses the ctx given to Router.Run). Listen then returns once the
// queue is declared and bound: during a connection outage it blocks until the
// connection is back or the subscriber is closed, and Watermill's Router holds its
// handler lock meanwhile, so handlers added to that Router and Router.Close wait too
// (close the subscriber to end the wait). Where that matters, listen before the Router
// runs, or call Listen from a goroutine of your own.
//
// Listening twice to the same target and pattern on one Bus fails with
// ErrDuplicateListen. Listener.Stop stops a listener (its handler ends and its queue
// goes away), Listener.Start starts it again on a new queue. Watermill closes a router
// whose handlers have all stopped, so do not stop the only handler of a router you
// want to keep.
//
// A handler error or panic is logged and the event dropped (acked): events are not
// retried, as with Node. This is a choice: an event carries no attempt count and its
// queue has no dead-letter queue, so a nacked event that fails every time would come
// back forever. Use a task (package tasks) for work that must be retried. A handler, or
// a middleware wrapped around it, that nacks the message itself (msg.Nack(), as
// middleware/qos does with messages still waiting for a slot at shutdown) gives the
// event back to its queue: the Router's ack then has no effect. Do not give the
// listen subscriber to a flow control that pauses with basic.cancel (middleware/qos):
// cancelling the consumer of an auto-delete queue deletes the queue.
//
// # Durable, shared listens
//
// Beyond the Node library, Listen(..., Durable(name)) consumes the durable queue
//
//	q.pubSub.<service>.durable.<name>     durable, not exclusive, no arguments
//
// (name "" means "<target>.<pattern>") bound with <target>.<pattern>. Events are kept
// while the service is stopped or restarting, and the service's instances share them
// as competing consumers: each event is handled by one instance of the service (not by
// each). They survive a broker restart only if emitted persistent (Config.Persistent;
// Node emits transient events). The queue and its binding stay until someone deletes
// them (`rabbitmqctl delete_queue q.pubSub.<service>.durable.<name>`). Listening with
// the same name and another target or pattern binds the new key and keeps the old
// binding (AMQP cannot list a queue's bindings, so the Bus cannot know which ones an
// earlier run made): the queue then gets the events of both. Remove an old binding in
// the management UI (Queues > the queue > Bindings > Unbind), or listen under a new
// name and delete the old queue. Node peers do not see any difference.
//
// # Concurrency
//
// Bus and Listener are safe for concurrent use. New does no I/O and starts no
// goroutine; listeners run on the Router's goroutines, which the Router joins.
// Handlers run concurrently, up to the subscriber's prefetch.
package events
