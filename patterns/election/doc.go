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
//   - when an attempt finds the lock held and it does not know the leader yet, it sends
//     a peer.alive.req (at most every AskInterval) and the leader, Go or Node, answers
//     at once; the Tracker also asks when it starts, so a joining instance knows the
//     leader without waiting for the next periodic heartbeat;
//   - on taking the lock, picks a term greater than every term it heard of and not
//     below the clock in ms, and asks the Tracker for a heartbeat at once with
//     isMaster:true and the term;
//   - while it leads, watches the lock's channel: when the channel or the connection
//     closes it steps down at once (IsLeader turns false, the leadership context is
//     cancelled) and tries again as soon as its connection is back, as one contender
//     among others (it may well win again: a follower only tries every RetryInterval);
//   - when it stops (Close or ctx), steps down, then releases the lock (deletes the
//     queue) and sends a heartbeat with isMaster:false, so Go followers take over at
//     once instead of at their next retry. (Node followers notice the new leader from
//     its heartbeats.)
//
// Followers take the leader from heartbeats with isMaster:true: a claim replaces the
// leader they know unless it names another instance with a term not above the known
// one; a claim without a term (a Node leader sends none), and any claim while no leader
// or a Node leader is known, is taken as it is. They forget the leader when it says isMaster:false, says goodbye, or is declared
// gone by the Tracker, and try the lock at once then (and ten times as often as usual
// for two intervals, since the lock may be freed a moment after the goodbye); when the
// Tracker suspects the leader they try the lock at once without forgetting it.
//
// # Guarantees
//
// The broker's lock makes sure at most one connection holds it. An Elector reports
// leadership (IsLeader) only while its lock channel is open as far as its client knows:
// it steps down the moment amqp091 reports the channel or connection closed, and when it
// stops it steps down before it releases the lock. A new leader picks a term greater
// than any it heard of and not below the current time in ms, so two Go instances never
// lead in the same term as long as the new leader heard of the old term or their hosts'
// clocks agree to better than the time between the two step-ups; a Go leader that hears
// another Go instance lead in a higher term steps down (Superseded) and releases what it
// still holds. Two instances may report leadership at the same time, in different
// terms, until the old leader notices it lost the lock (see Known limits).
//
// A leader-only handler runs a message only while this instance leads in the term the
// handler was started for: it refuses (nacks) a message once IsLeader is false or the
// term changed, cancels the message context of the messages it runs the moment the
// leadership ends, and is stopped on the hook goroutine after the step-down.
//
// # Known limits
//
//   - A leader cut off from the broker without its connection being closed (a network
//     partition, a frozen broker) believes it leads until the AMQP heartbeat times out
//     (amqp091 gives up after three silent rabbitmq.ConnectionConfig.Heartbeat
//     intervals: 30 s with the default 10 s), while the broker, once its own heartbeat
//     timeout closed the connection, may already have handed the lock to another
//     instance. Even when the broker closes the connection cleanly, the new leader may
//     step up a moment before the old one has read the close. Fence side effects with
//     the term (Leading, TermFromContext) where that matters: a store that remembers
//     the highest term it saw can refuse writes from an older one.
//   - A message a leader-only handler already runs when leadership ends gets its
//     context cancelled, but a handler that ignores its context runs it to the end;
//     if the connection was lost, its ack is lost too and the broker gives the message
//     to the next leader as well (at-least-once, as everywhere).
//   - A Node instance sends no term, so terms say nothing about a Node leader, and a
//     follower takes any Node claim.
//   - Starting a leader-only handler subscribes, which waits for the connection: when
//     the connection drops just after a step-up, the step-down hooks (and the stop of
//     the other leader-only handlers) wait until the connection is back or Run ends.
//     The handler refuses every message meanwhile, since this instance no longer leads.
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
// The label values are closed sets: service is the Tracker's service name, outcome one
// of the three above. leader_changes_total counts every time this instance learns of a
// leader (itself included) other than the one it knew just before, so a leader known
// again after a time without one counts again.
//
// # Concurrency
//
// An Elector is safe for concurrent use. New does no I/O and starts no goroutine. Run
// runs the election loop on the calling goroutine and one hook goroutine; it joins both
// (and the goroutines that wait for a router to run before starting a leader-only
// handler) before it returns. OnStepUp and OnStepDown run on the hook goroutine, one at
// a time, in the order of the transitions, never under a lock, after the state
// changed: IsLeader is already false when OnStepDown runs, and the leader-only handlers
// have stopped (the hook goroutine waits up to 30 s for each); by the time OnStepUp
// runs, this instance may already have stepped down again (use StepUp.Context). At each
// step-up the hook goroutine starts, per leader-only handler, a goroutine that waits for
// the router to run and then adds and starts the handler. Heartbeats are read on the
// Tracker's receiving goroutine, which the Elector never blocks.
package election
