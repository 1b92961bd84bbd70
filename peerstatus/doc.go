// Package peerstatus keeps every instance of a service informed about the others: it
// publishes this instance's heartbeat, answers heartbeat requests, keeps a table of the
// service's members, and asks any service, Go or Node, for its members (Status).
//
// It speaks the micromessaging v3.2.9 scheme (WIRE.md, "Peer status and election"), so
// Go and Node instances of one service see each other.
//
// # Wire
//
// A heartbeat is an event on the exchange x.pubSub with routing key
// internal.<service>.peer.alive (AliveTopic) and a JSON body with Node's fields, in
// Node's order: id, name, isReady, isMaster, elapsedMs, startedAt (ISO date), leaderId
// (omitted while unknown), memoryUsage {rss, heapTotal, heapUsed, external, arrayBuffers}
// and knownPeers. After them come this package's extensions, which Node ignores: type
// (BodyType) and version (BodyVersion) so the body can evolve, intervalMs (the sender's
// heartbeat period), term (the leadership term the sender knows; omitted when 0),
// leaving (true on the goodbye sent when Run ends; omitted otherwise) and load (the
// value of Config.Load; omitted when nil). Received bodies are read leniently: only id is required, fields of an
// unexpected type count as absent, unknown fields are ignored.
//
// An event with key internal.<service>.peer.alive.req (RequestTopic, body "") asks
// every instance of service for a heartbeat at once.
//
// # Behaviour
//
// Run subscribes to the own service's heartbeats and requests, then sends a heartbeat
// and a request (so it learns the members, and the leader, at once instead of at their
// next periodic heartbeat, which for Node instances can be 10 s away), then a heartbeat
// every Config.Interval (10 s by default, like Node; Go instances may beat faster, and
// each heartbeat says how often its sender beats), and one in answer to requests and to
// Announce (the elector announces its step-ups and step-downs this way): requests that
// arrive while a heartbeat is being sent are answered together by one more heartbeat.
//
// The table holds every instance heard from. A peer is Alive while heartbeats arrive;
// Suspect after SuspectAfter (default 2) of its own periods without one, plus half a
// period; Gone and removed after GoneAfter (default 4; Node's 40 s) periods plus half
// a period, or at once when its goodbye heartbeat arrives. The period of a Node peer,
// which does not advertise one, is taken as 10 s. knownPeers in the own heartbeat counts
// Alive and Suspect peers plus the own instance: that is the count Node's getStatus
// compares with the number of answers to stop waiting early, so it must not be too
// small (a Suspect peer that is in fact alive would otherwise be missed).
//
// Changes (a latest-value channel of the table), Config.OnChange (join, leave and
// change, computed with Diff) and Observe (every heartbeat of another instance and
// every peer turning Suspect or Gone, for the elector) report what happens; none of
// them can block the heartbeat loop.
//
// Status(ctx, service) works like Node's getStatus: it listens to the service's
// heartbeats on a queue of its own, sends a request and collects the answers. It
// returns as soon as as many members answered as the largest knownPeers reported (so at
// once for a lone instance), else after Config.StatusWait (1 s by default). Unlike
// Node, it also stops at the first answer when that says knownPeers 1: an instance that
// has just started and not yet heard of the others can cut the wait short.
//
// # Transport
//
// The package uses only Watermill's message.Publisher and message.Subscriber. The
// Publisher must publish to x.pubSub with the topic as routing key; the Subscriber must
// give every Subscribe call its own queue bound to x.pubSub with the topic as binding
// key, deleted when the subscription ends: with the rabbitmq package, per Subscribe an
// exclusive auto-delete queue wire.ListenQueue(service, uuid), consumed with NoAck.
// Heartbeat traffic is consumed by the Tracker itself, not through a message.Router:
// router middleware such as throttling or QoS pausing must never make a busy instance
// look dead to its peers.
//
// # Metrics
//
// With a Config.Registerer: micromessaging_peers{service,state} (members by state,
// alive and suspect, the own instance counted as alive) and
// micromessaging_peer_heartbeats_total{service,event} (sent, send_failed, received,
// malformed; received and malformed count heartbeats on the own service's heartbeat
// subscription, the own heartbeats excepted, not the answers Status collects). The
// label values are closed sets: service is Config.Service, state and event the enums
// above. Trackers sharing a registry share the collectors.
//
// # Concurrency
//
// A Tracker is safe for concurrent use. New does no I/O and starts no goroutine; Run
// receives heartbeats and requests on the calling goroutine, starts the heartbeat and
// (with OnChange) notification goroutines and joins them before it returns. Observe
// callbacks run on the goroutine that called Run and must not block; OnChange runs on
// its own goroutine, one call at a time. Neither runs under a lock of the Tracker.
package peerstatus
