// Package tasks sends fire-and-forget work to one instance of a service (competing
// consumers) and handles it with bounded, delayed retries and a dead-letter queue, on
// the micromessaging v3 wire protocol: a Node micromessaging worker takes tasks sent by
// Client.Task, and a Worker handler takes tasks sent by Node's task().
//
// The package knows Watermill (message.Publisher, message.Subscriber,
// message.NoPublishHandlerFunc) and package wire; the caller builds the transport
// (usually package rabbitmq) and wires it in, as router does.
//
// # Sending
//
// Client.Task publishes to q.requests.<service>.<route> on the default exchange:
// persistent, mandatory, headers idRequest and user headers, __mms {route, isTask: true,
// iat}; no correlationId, replyTo or expiration (WIRE.md, "Task"). It returns once the
// broker confirmed the task, and fails at once with an error wrapping ErrUnroutable
// when no queue exists for the route. The publisher must be confirming and mandatory:
//
//	pub, _ := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Mandatory: true})
//	client, _ := tasks.NewClient(tasks.ClientConfig{Publisher: pub})
//	err := client.Task(ctx, "billing", "invoice", map[string]any{"id": 7}, nil)
//
// # Handling
//
// Worker.Handler wraps a handler for a Watermill router. Subscribe it to
// Worker.Topic(route) = q.requests.<service>.<route>, declared exactly as Node declares
// it: durable, not exclusive, not auto-delete, arguments wire.RequestQueueArgs()
// (x-expires 86400000) and nothing else, or the broker refuses one of the two
// declarations with 406 PRECONDITION_FAILED:
//
//	sub, _ := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
//		Queue: func(topic string) rabbitmq.Queue {
//			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
//		},
//	})
//	w, _ := tasks.NewWorker(tasks.WorkerConfig{Service: "billing", Publisher: pub, Channels: conn})
//	router.AddConsumerHandler("tasks.invoice", w.Topic("invoice"), sub, w.Handler("invoice", fn))
//
// A task is acked when its handler returns nil. Tasks are delivered at least once: a
// task may run again after a crash or a lost connection; make handlers idempotent. A
// request (RPC) sent to a task route is handled like a task and gets no reply; a route
// is either an RPC route or a task route.
//
// # Retries and dead letters
//
// A handler that returns an error, panics, or overruns MaxDuration never makes the task
// spin in a hot loop. Because q.requests.* must keep Node's declaration, it cannot carry
// a dead-letter exchange; instead, after failed attempt n the worker publishes a copy
// of the task (same body, __mms, idRequest and user headers; persistent) to the delay
// queue
//
//	q.retry.<service>.<route>.<n>   durable; x-dead-letter-exchange "",
//	                                x-dead-letter-routing-key q.requests.<service>.<route>
//
// with the backoff as the message's expiration (InitialBackoff * Multiplier^(n-1),
// capped by MaxBackoff, optional Jitter), and header x-mm-attempt = n+1. When it
// expires the broker moves it back to the request queue, where any worker (Go or Node)
// takes it. After attempt MaxAttempts the copy goes to
//
//	q.dead.<service>.<route>        durable, no arguments, never consumed
//
// with x-mm-attempt = the last attempt and x-mm-error = the last error. In both cases
// the original delivery is acked only after the broker confirmed the copy, so no task
// is lost between the two steps (a crash there duplicates it). If the copy cannot be
// published (connection lost, queue declared with other arguments), the delivery is
// nacked after a pause of up to 5 s and the broker keeps it: the task runs again at the
// same attempt, at most once per pause, for as long as the copy cannot be published.
// If the delivery's channel is lost while the handler runs (msg.Context() ends), a
// failure publishes no copy: the broker redelivers the original, and that attempt does
// not count. The worker declares the retry and dead queues of a route before its first
// copy (through WorkerConfig.Channels).
//
// A retry copy waits in its retry queue, then the broker dead-letters it to the request
// queue; if the request queue no longer exists then (deleted, or expired after 24 h
// without a consumer), the broker drops the copy. So delete a request queue only when
// its retry queues are empty. That move is RabbitMQ's dead-lettering, which the broker
// does not confirm internally for classic queues: a broker crash at that very moment
// can drop the copy. The retry and dead queues have no x-expires: they stay
// until deleted. Lowering MaxAttempts leaves the retry queues of the higher attempt
// numbers in place (copies in them still come back, and then count against the new
// MaxAttempts); delete them once empty with `rabbitmqctl delete_queue
// q.retry.<service>.<route>.<n>`.
//
// Handlers read the attempt number with Attempt(msg). People inspect dead letters in
// the management UI (Queues > q.dead.<service>.<route> > Get messages) or with
// `rabbitmqadmin get queue=q.dead.<service>.<route> count=10 ackmode=reject_requeue_true`,
// and move them back with Replay(ctx, conn, service, route), which republishes each one
// to the request queue with a confirm before acking it (attempts start again at 1;
// x-mm-replays counts the replays). Delete them with `rabbitmqctl purge_queue`.
//
// # Long tasks and consumer_timeout
//
// RabbitMQ closes the channel of a consumer that keeps a delivery unacked longer than
// consumer_timeout (default 30 min); every delivery of that channel is then requeued.
// The worker therefore cancels a handler's ctx after MaxDuration (default 25 min), waits
// one more second, then counts the attempt as failed (reason "timeout") and retries the
// task, acking the delivery before the broker's limit. A handler that ignores its ctx
// keeps running on its own goroutine (gauge micromessaging_tasks_abandoned_handlers)
// while its task is retried, so handlers must honour ctx. MaxDuration counts from the
// call of the worker's handler, the broker's timeout from the delivery: time a delivery
// waits before that (behind a concurrency limit in a middleware, say) counts for the
// broker only, so leave a margin. For tasks that legitimately run longer, raise the
// broker's limit for their queue and MaxDuration with it:
//
//   - RabbitMQ 3.11.15 and later: a policy, which leaves the queue's declaration (and so
//     Node compatibility) untouched:
//     rabbitmqctl set_policy --apply-to queues long-tasks '^q\.requests\.billing\.report$' '{"consumer-timeout":7200000}'
//     (the x-consumer-timeout queue argument would change the declaration: never on
//     q.requests.*).
//   - Older brokers (3.10 here): only the global consumer_timeout in rabbitmq.conf (in
//     ms), for every queue.
//
// RabbitMQ 4.3 enforces consumer timeouts on quorum queues only; q.requests.* are
// classic queues.
//
// # Metrics
//
// With a Registerer: micromessaging_tasks_sent_total{route,outcome} (Client: ok,
// unroutable, error), micromessaging_tasks_handled_total{route,outcome} and
// micromessaging_tasks_handling_seconds{route,outcome} (success, retry, dead_letter,
// requeue), micromessaging_tasks_retries_total{route},
// micromessaging_tasks_dead_lettered_total{route},
// micromessaging_tasks_failures_total{route,reason} (error, panic, timeout) and
// micromessaging_tasks_abandoned_handlers{route}. Two Workers or Clients on one
// registry share the collectors.
//
// # Concurrency
//
// Client and Worker are safe for concurrent use; the router runs Worker handlers
// concurrently, up to the subscriber's prefetch. NewClient and NewWorker do no I/O and
// start no goroutine; each task runs on a goroutine of its own that Worker.Close joins
// (bounded by CloseTimeout). Replay is safe to run while workers run, but run one Replay
// per route at a time.
package tasks
