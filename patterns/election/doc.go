// Package election elects one leader among the instances of a service, Go and Node
// alike, with the scheme of the Node library micromessaging v3.2.9 (WIRE.md, "Peer
// status and election"), and runs leader-only work.
//
// # The scheme
//
// The lock is the queue internal.<service>.lock, declared exclusive: the broker lets one
// connection hold it and deletes it when that connection closes; others get 405
// RESOURCE_LOCKED. Whoever holds it leads, and says so in its heartbeats (isMaster:true,
// leaderId = its id; see package peerstatus); the others learn the leader from those
// heartbeats. Node instances try the lock at start and then only after 15 s without a
// leader heartbeat, so a Node group fails over in 15-25 s. A Go Elector (Run):
//
//   - tries the lock at once, and while it follows, again every RetryInterval (500 ms by
//     default, with ±20 % jitter): when a leader's process dies the broker frees the
//     lock at once and a Go follower takes it within about one interval;
//   - when an attempt fails and it does not know the leader yet, it sends a
//     peer.alive.req (at most every AskInterval) and the leader, Go or Node, answers at
//     once; the Tracker also asks when it starts, so a joining instance knows the
//     leader without waiting for the next periodic heartbeat;
//   - on taking the lock, picks a term greater than every term it heard of (and than
//     the clock in ms), and sends a heartbeat at once with isMaster:true and the term;
//   - while it leads, watches the lock's channel: when the channel or the connection
//     closes it steps down at once (IsLeader turns false, the leadership context is
//     cancelled) and tries again (after a reconnect it is one contender among others);
//   - when it stops (Close or ctx), releases the lock (deletes the queue) and sends a
//     heartbeat with isMaster:false, so Go followers take over at once instead of at
//     their next retry. (Node followers notice the new leader from its heartbeats.)
//
// Followers take the leader from heartbeats with isMaster:true: the claim with the
// highest term, or the newest claim when a Node leader (which sends no term) is
// involved. They forget the leader when it says isMaster:false, says goodbye, or is
// declared gone by the Tracker, and try the lock at once then.
//
// # Guarantees
//
// The broker's lock makes sure at most one connection holds it. An Elector reports
// leadership (IsLeader) only while its lock channel is open, and steps down the moment
// amqp091 reports the channel or connection closed; two Go instances therefore never
// both lead in the same term: a new leader picks a term greater than any it heard of
// and than the current time in ms, and a Go leader that hears another Go instance lead
// in a higher term steps down (Superseded) and releases what it still holds. A leader
// cut off from the broker without the connection being closed yet (a network partition)
// believes it leads until the AMQP heartbeat times out, while the broker may already
// have handed the lock to another: fence side effects with the term (Leading,
// TermFromContext) where that matters.
//
// Measured on the development machine (2 shared cores, RabbitMQ 3.10 on loopback;
// BENCHMARKS.md beside this file has the commands and all numbers), with the defaults:
// after a kill -9 of the leader process, 3 Go instances agreed on a new leader in 180 ms
// (p50; p99 516 ms), 10 in 51 ms (p99 238 ms); after a clean stop in 9-24 ms; 3
// instances started together agreed 48 ms after they were launched (p99 71 ms), 10 in
// 115-183 ms. The Node library takes 12.6-18.1 s after a kill -9, 18 s after a clean
// close and 10.3 s to agree at start.
//
// # API
//
// IsLeader is an atomic load. Leader, Term and State read the current view; Changes is
// a latest-value channel of State that never makes the election wait. Leading returns a
// context cancelled when leadership ends, with the term, or ErrNotLeader.
// Config.OnStepUp and Config.OnStepDown are hooks. AddHandler and AddConsumerHandler
// register Watermill handlers that run only while this instance leads: they are added
// to the router and started at each step-up (once the router runs) and stopped at each
// step-down; Middleware refuses messages with ErrNotLeader on handlers you run
// yourself. Each Elector needs a Locker of its own: exclusive queues belong to a
// connection, so two Electors of one service on one *rabbitmq.Connection would both
// "hold" the lock.
//
// # Metrics
//
// With a Config.Registerer: micromessaging_election_is_leader{service},
// micromessaging_election_leader_changes_total{service},
// micromessaging_election_term{service} and
// micromessaging_election_lock_attempts_total{service,outcome} (acquired, held, failed).
//
// # Concurrency
//
// An Elector is safe for concurrent use. New does no I/O and starts no goroutine. Run
// runs the election loop on the calling goroutine and one hook goroutine; it joins both
// (and the goroutines that wait for a router to run before starting a leader-only
// handler) before it returns. OnStepUp and OnStepDown run on the hook goroutine, one at
// a time, in the order of the transitions, never under a lock, after the state
// changed: IsLeader is already false when OnStepDown runs. Leader-only handlers are
// started and stopped on the hook goroutine too. Heartbeats are read on the Tracker's
// receiving goroutine, which the Elector never blocks.
package election
