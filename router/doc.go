// Package router is the one-stop facade of micromessaging: a Service is one instance of
// a named service that answers its routes and calls other services over RabbitMQ, in
// the micromessaging v3 wire format (Go and Node services share one broker).
//
//	svc, err := router.New("server", router.Config{})           // no I/O yet
//	svc.Handle("request-name", func(ctx context.Context, req *rpc.Request) (any, error) {
//		return map[string]string{"im": "fine"}, nil
//	})
//	err = svc.Run(ctx)                                          // connect, serve until ctx ends
//
//	reply, err := client.Request(ctx, "server", "request-name", body)
//
// # Behaviour
//
// New checks the service name (not empty, no white space) and the config, and gives
// the instance a UUID v4 (ID). It does no I/O and starts no goroutine.
//
// Connect dials two connections (one to publish, one to consume; each reconnects by
// itself) and starts consuming every route registered so far: with the Service's own
// Watermill router it returns once they are consumed. Connecting twice is a no-op.
// Run is Connect, then serving until ctx ends or Close is called, then Close.
//
// Handle may be called before or after Connect; after, it returns once the route is
// consumed. Each route is a Watermill handler on q.requests.<service>.<route>; the
// instances of a service compete for its requests. See package rpc for what a handler
// sees and sends (deadlines, errors, streams, expiry).
//
// Request and Stream call another service (see rpc.Client): the instance's reply
// queue is declared on the first call. They fail with ErrNotConnected before Connect
// or Run, and wait while Connect is in progress.
//
// # QoS (on by default)
//
// Every Service has a QoS limiter (package middleware/qos; Service.QoS returns it),
// built from Config.QoS: the zero value is qos's adaptive defaults. The limit of
// messages handled at once starts at max(16, 4×GOMAXPROCS), grows by a quarter per
// sample (every 250 ms) while messages wait for a slot, up to 1000, and shrinks under
// pressure: scheduling latency p99 over 20 ms, GC over 30 % of the CPU, handlers 5×
// slower than usual while messages wait, memory in use over the soft limit. Memory
// limits default to 65 % (soft) and 80 % (hard) of GOMEMLIMIT; without GOMEMLIMIT and
// without Config.QoS.MemorySoftLimit/MemoryHardLimit the memory signals are off.
//
// The limiter wraps the RPC request handlers (Handle), the task handlers (HandleTask,
// outside the retries: a message refused by the limiter is nacked back to its queue,
// not counted as an attempt) and the event listeners (Listen). It does not wrap the
// reply consumer of Request and Stream (a handler waiting for a reply queued behind
// itself would never finish), the heartbeats and status queries, HandleLeader
// handlers, or handlers you add to Router() yourself (wrap those with
// s.QoS().Middleware if you want them counted).
//
// A message that finds no free slot waits in the process, unacked. The request
// subscriber (every RPC and task route of the Service) is attached for back-pressure:
// under pressure its prefetch is lowered to twice its share of the limit, over the
// hard memory limit it is paused (basic.cancel: requests stay in their queues, for
// other instances or for this one), and when pressure is released it is resumed and
// its prefetch set back to Config.Prefetch (100 by default; Config.QoS.Prefetch is
// ignored). The event listen subscriber is not paused (a listen queue may be
// exclusive or auto-delete: cancelling its consumer could delete it); its messages
// still wait for slots. A handler that calls a route of its own service holds its slot
// while the call waits for another one: while intake is stopped, such a call waits
// until memory falls or the call times out.
//
// Config.QoS.Routes limits single routes, keyed by route name: a key applies to the
// RPC route or task route of that name (and to a handler of your own with that
// Watermill name). Config.QoS.OnPressure and OnRelease are the hooks (Node's pressure
// and pressureReleased). The heartbeats of the instance carry its QoS state as their
// "load" (a QoSLoad, e.g. {"state":"normal","limit":16,"inFlight":3,"inFlightBytes":512}),
// which peers read from peerstatus.Peer.Load; Config.Load replaces it. The limiter's
// sampling goroutine runs from Connect to Close; Close closes the limiter before the
// handlers stop, so messages still waiting for a slot are nacked back to their queue
// while the handlers in flight finish.
//
// To tune it, set fields of Config.QoS, for example a fixed limit:
//
//	router.Config{QoS: qos.Config{Mode: qos.Static, MaxInFlight: 50}}
//
// To turn it off: router.Config{DisableQoS: true} (QoS returns nil, heartbeats carry
// no load, and each route's handlers are bounded only by the prefetch of its queue).
//
// # Your own Watermill router
//
// Config.Router makes the Service add its handlers to a *message.Router you own: you
// run and close it; Connect calls RunHandlers when it already runs; Close stops only
// the Service's handlers (Watermill then closes a router that has no handler left).
// Without it, the Service runs its own router for its event, task and leader handlers;
// Router() returns it so you can add middleware or handlers of your own before Run.
// Its RPC routes (Handle) do not run on that router: the request subscriber's workers
// consume them directly (rabbitmq.Subscriber.Handle, with the QoS limiter inside),
// which spares every request two goroutine hand-offs and a goroutine start, and
// router middleware does not apply to them. Pass Config.Router to run them on a router
// of yours with its middleware (rpc.Server.AddHandler does the same on any router).
//
// # Metrics
//
// With Config.Registerer, the Service registers the rpc metrics (package rpc) and those
// of its connections, publishers and subscribers (package rabbitmq), and those of its
// QoS limiter (micromessaging_qos_*, package middleware/qos: the counts of the
// Services on one registry are summed). Several Services may share one registry.
//
// # Concurrency
//
// A Service is safe for concurrent use. Its goroutines are the Watermill router's, the
// request subscriber's workers (per RPC route, as many as its requests were ever in
// flight at once, kept until Close), the connections' supervisors, the peer status and
// election loops, and the QoS limiter's sampling loop; Close (and the end of Run) stops
// them all. Close is idempotent: calls in flight fail with rpc.ErrClosed, handlers in
// flight finish within Config.CloseTimeout, then subscribers, publishers and
// connections close.
//
// # Extending
//
// Connections, publishers and subscribers are built in one place (transport.go); a
// pattern (events and tasks, election and peer status, QoS) gets its publisher or
// subscriber there and its methods on Service in a file of its own.
package router
