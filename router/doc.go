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
// # Your own Watermill router
//
// Config.Router makes the Service add its handlers to a *message.Router you own: you
// run and close it; Connect calls RunHandlers when it already runs; Close stops only
// the Service's handlers (Watermill then closes a router that has no handler left).
// Without it, the Service runs its own router; Router() returns it so you can add
// middleware or handlers of your own before Run.
//
// # Metrics
//
// With Config.Registerer, the Service registers the rpc metrics (package rpc) and those
// of its connections, publishers and subscribers (package rabbitmq). Several Services
// may share one registry.
//
// # Concurrency
//
// A Service is safe for concurrent use. Its goroutines are the Watermill router's and
// the connections' supervisors; Close (and the end of Run) stops them all. Close is
// idempotent: calls in flight fail with rpc.ErrClosed, handlers in flight finish within
// Config.CloseTimeout, then subscribers, publishers and connections close.
//
// # Extending
//
// Connections, publishers and subscribers are built in one place (transport.go); a
// pattern added later (events, tasks, election, peer status, QoS middleware) gets its
// publisher or subscriber there and its methods on Service in a file of its own.
package router
