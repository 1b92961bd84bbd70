// Package rpc is request/reply over RabbitMQ in the micromessaging v3 wire format:
// a Server answers the routes of a service, a Client calls routes of other services.
// Go and Node micromessaging peers call each other in both directions.
//
// Both halves are Watermill handlers: they plug into a *message.Router you already run
// (Server.AddHandler, Client.AddHandler), or the router facade (package router) wires
// them for you. Server.HandlerFunc is an ordinary Watermill handler function, so it
// also runs without a router (the facade runs it on rabbitmq.Subscriber.Handle). The
// package uses only Watermill's Publisher/Subscriber interfaces and
// package wire; the RabbitMQ transport (package rabbitmq) provides those.
//
// # Server
//
// Each route is one Watermill consumer handler on the queue q.requests.<service>.<route>
// (durable, x-expires 24 h: wire.RequestQueueArgs). Instances of a service consume the
// same queue and so compete for its requests. For each request the Server:
//
//   - drops a request whose deadline (__mms.eat) has already passed: it is acknowledged
//     and the handler does not run (outcome "expired");
//   - runs the Handler with a ctx that carries the request's deadline;
//   - sends the returned value as the reply, or the returned error as an error reply:
//     a *RemoteError (found with errors.As) keeps its message, codeString, code and
//     info; any other error is sent with code 500 and level "fatal";
//   - turns a panic of the handler into an error reply (code 500, codeString "panic");
//   - does not send a reply once the deadline has passed (outcome "expired");
//   - acknowledges the request in every case (the Watermill handler returns nil), so a
//     failing request is never redelivered in a loop.
//
// A handler streams by calling Request.Write for each chunk; the value it returns is
// the stream's end message. Replies go to the request's reply queue through the
// Server's publisher (default exchange, not mandatory), with the request's
// correlationId, its idRequest, no replyTo, and __mms isError/isEnd/isStream/sequence
// as WIRE.md specifies (sequence counts from 0; the end carries the next number).
// Tasks (__mms.isTask) that reach a route run the handler but get no reply.
//
// # Client
//
// Client.Request publishes to q.requests.<service>.<route> (mandatory, so that a
// route nobody serves fails at once with ErrUnroutable) with a correlationId, the
// instance's reply queue as replyTo, and the call's timeout as AMQP expiration and
// __mms.eat. Replies come back on q.replyQueue.<service>.<instanceId> (exclusive,
// consumed without acks by one handler, HandleReply) and are dispatched by
// correlationId; replies nobody waits for (late, or after a cancel) are dropped and
// counted. With a publisher that has PublishUnconfirmed (rabbitmq.Publisher), requests
// are published without broker confirms: the reply shows a request arrived, its return
// fails the call at once with ErrUnroutable, and if the publishing channel closes before
// any reply came the request is published again (a server may then run it twice, as
// after a lost confirm). Streamed replies are delivered in sequence order (early ones are buffered)
// through OnChunk or the Stream iterator, and each chunk re-arms the timeout.
//
// Errors: ErrUnroutable, ErrTimeout (which also matches context.DeadlineExceeded), the
// ctx's own error on cancellation, *RemoteError for a remote failure (never confused
// with a local timeout), ErrClosed, ErrInvalidName, ErrProtocol.
//
// The timeout of a call is the ctx deadline, else WithTimeout, else
// ClientConfig.Timeout (default 120 s). The ctx bounds the whole call, streams
// included; the timeout itself bounds the wait for the first reply and then for each
// next stream message.
//
// # Deadlines and clocks
//
// The deadline crosses the wire as an absolute time (__mms.eat, ms since the epoch),
// so the server's and the caller's clocks must agree to well within the timeouts you
// use (run NTP). A Node caller sends the same field.
//
// # Metrics
//
// With a prometheus.Registerer: micromessaging_rpc_client_requests_total{route,outcome},
// micromessaging_rpc_client_request_duration_seconds{route},
// micromessaging_rpc_client_in_flight_requests,
// micromessaging_rpc_client_dropped_replies_total,
// micromessaging_rpc_server_requests_total{route,outcome},
// micromessaging_rpc_server_request_duration_seconds{route} and
// micromessaging_rpc_server_in_flight_requests. Outcomes are the closed set ok, error,
// timeout, unroutable, canceled, expired. Several clients or servers may share a
// registry.
//
// # Concurrency
//
// Server, Client and Request are safe for concurrent use. Server handlers run on the
// goroutines of the Watermill router. The reply handler added by Client.AddHandler
// starts one goroutine per reply subscription when the router subscribes, ended when
// the subscription ends; replies are dispatched on it (or, with a subscriber that has
// SubscribeFunc, on the subscriber's own goroutine). The Client starts no other
// goroutine. A call waits on the caller's goroutine (Stream and OnChunk deliver
// chunks there too).
package rpc
