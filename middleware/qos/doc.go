// Package qos protects a process that consumes messages from taking more work than it
// can carry: a Limiter, shared by any set of Watermill handlers, caps the messages (and
// payload bytes) handled at once, adapts that cap to the health of the Go runtime, and
// pushes back on the broker so that waiting messages stay in the queue, where other
// instances can take them, instead of piling up unacked in this process.
//
//	l, err := qos.New(qos.Config{Registerer: reg})
//	...
//	router.AddMiddleware(l.Middleware)
//	l.Attach(subscriber, "") // *rabbitmq.Subscriber satisfies qos.FlowControl
//	go l.Run(ctx)            // the sampling loop
//	defer l.Close()
//
// # Behaviour
//
// Middleware makes each message wait, in FIFO order, for a slot of its route (when
// Config.Routes limits its handler; the route is the handler name,
// message.HandlerNameFromCtx) and then for a global slot, runs the handler, and gives
// the slots back when the handler returns (or panics). A slot is a message and its
// len(msg.Payload) bytes: Config.MaxBytesInFlight bounds the payload bytes in flight
// like Node's maxParallelBytes; a single message larger than the byte limit still runs,
// alone. When msg.Context() ends while a message waits, the message is Nacked and the
// middleware returns an error wrapping ErrCanceled and the context's error; after
// Close, waiting and new messages are Nacked with ErrClosed.
//
// In Static mode the global limit is Config.MaxInFlight. In Adaptive mode (the zero
// value) it starts at Config.InitialInFlight and Run moves it between MinInFlight and
// MaxInFlight after every sample (every SampleInterval, 250 ms by default):
//
//   - Normal (no signal over its threshold): when a message had to wait for a global
//     slot during the interval, or messages wait now (the limit is what holds the
//     work back), the limit grows by a quarter (at least 1), but near the soft memory
//     limit by no more than limit × soft / memory in use (the live heap is measured
//     late; a step must not overshoot). Otherwise it stays.
//   - Pressure: memory over the soft limit halves it (down to MinInFlight); scheduler
//     latency or GC CPU over target multiply it by 3/4, but not below 4×GOMAXPROCS
//     (fewer running handlers than Ps cannot relieve the CPU, and with about as many
//     they idle between messages: it would only cut throughput);
//     handler latency over tolerance multiplies it by 9/10. With several reasons, the
//     smallest result wins.
//   - Stopped: memory over the hard limit. The limit is 0 (no message starts; those
//     running finish), attached subscriptions are paused, and the limit to restart from
//     is halved. Intake resumes when memory is back below the middle of the soft and
//     hard limits.
//
// In Static mode the limit never moves, but when Run runs and a memory limit is known
// the memory signals still act: Pressure over the soft limit (prefetch lowered, see
// Back-pressure) and Stopped over the hard one. The CPU and latency signals are only
// measured (gauges) in Static mode.
//
// Without Run the limit stays where it is: static limits work without Run; adaptive
// limits, back-pressure, hooks and the signal gauges need it. When Run returns it
// lifts a stop and restores the subscriptions, since nothing would lift them later.
//
// # Signals
//
// The default SignalSource reads the Go runtime's own metrics (runtime/metrics):
//
//   - Scheduling latency: the p99 of /sched/latencies:seconds over the goroutines
//     scheduled since the previous sample (the delta of the cumulative histogram), Go's
//     analogue of Node's event-loop lag. Target: Config.SchedLatencyTarget, 20 ms.
//   - Memory in use: the live heap as marked by the last GC (/gc/heap/live:bytes) plus
//     the runtime's non-heap memory (/memory/classes/total:bytes minus the heap
//     classes), that is what the process would keep if it collected garbage now.
//     Garbage does not count: with GOMEMLIMIT the GC collects it before it matters,
//     and counting it would keep a GOGC=off process under pressure for good. Limits:
//     Config.MemorySoftLimit and MemoryHardLimit, by default 65 % and 80 % of
//     GOMEMLIMIT (debug.SetMemoryLimit(-1), read at each sample) when it is set; with
//     no GOMEMLIMIT and no configured limit, memory signals are off. Set GOMEMLIMIT
//     (for example to 90 % of the container's memory): it is what makes the Go GC,
//     and this package, aware of the memory the process may use; without it the heap
//     also holds up to GOGC % of garbage above the live data, which configured limits
//     do not see (set them lower). Since the live heap
//     is only measured by a GC and a stopped process allocates little, the limiter
//     calls runtime.GC while stopped when a handler ended since its last collection
//     (or every 2 s), and under soft memory pressure when no GC ran for a second.
//   - GC CPU: the share of the available CPU (GOMAXPROCS × wall time) that GC used,
//     idle-priority marking excluded, over the GC cycles that ended since the previous
//     sample (/cpu/classes/gc/total:cpu-seconds minus /cpu/classes/gc/mark/idle
//     against /cpu/classes/total:cpu-seconds). Target: Config.GCCPUTarget, 0.3.
//   - Handler latency: the mean time handlers took over the interval, measured by the
//     middleware, against a baseline that follows the lowest mean seen and forgets it
//     by 0.5 % a sample. It counts only while messages wait for slots (raising the
//     limit only lengthens handlers, say on a saturated database). Tolerance:
//     Config.HandlerLatencyTolerance, 5 × the baseline.
//
// Each threshold can be turned off (negative, or -1 for the memory limits). Custom
// signals plug in through Config.Signals.
//
// # Back-pressure
//
// Attach registers a FlowControl (a subscription; *rabbitmq.Subscriber satisfies it)
// with an optional route. While the state is Normal the limiter leaves it alone. Under
// Pressure it sets its prefetch to twice its share of the global limit (the limit
// divided by the number of attached subscriptions, rounded up, and at most the route's
// MaxInFlight), at most Config.Prefetch: the broker keeps the rest for other
// consumers, and the handlers never starve waiting for the next delivery. Changes of
// less than a quarter are skipped, since a new prefetch replaces the consumer. When
// Stopped it pauses it (basic.cancel: the rest stay in the queue; with the rabbitmq
// transport, messages received but not yet handed to the router are requeued, and
// those already handed out wait here, unacked, for the stop to end).
// When the state gets back to Normal it resumes it at once, and sets its prefetch back
// to Config.Prefetch (100 by default: set it to the prefetch your subscribers use)
// once the state has stayed Normal for a second, so that a state flapping at a
// threshold does not replace the consumer on every sample. A failed call is logged
// and retried at the next sample. Detaching a subscription, and the end of Run,
// restore it at once.
//
// Keep out of the limiter (no middleware, no Attach) the consumers that running
// handlers wait on, such as an RPC client's reply queue: a handler waiting for a reply
// that waits for a slot behind it would never finish.
//
// # Hooks
//
// Config.OnPressure runs when the state gets worse (Normal to Pressure or Stopped,
// Pressure to Stopped), Config.OnRelease when it gets better, like Node's pressure and
// pressureReleased events. They receive a Transition (states, reasons, limit, signals)
// and run on the goroutine that called Run, after the new limit and the flow control
// have been applied, never under a lock of the limiter (they may call its methods). A
// slow hook delays the next sample.
//
// # Metrics
//
// With Config.Registerer set, the limiter exports (prefix micromessaging_qos_): limit,
// in_flight, in_flight_bytes, wait_seconds (histogram; messages that did not wait count
// in the first bucket), throttled_total and throttled_seconds_total (messages that
// waited and for how long), paused_total and paused_seconds_total (stops), one gauge
// per signal (sched_latency_p99_seconds, memory_used_bytes, memory_soft_limit_bytes,
// memory_hard_limit_bytes, gc_cpu_fraction, handler_latency_seconds) and
// state{state="normal|pressure|stopped"}. Values are read from the limiter at scrape
// time, so the hot path pays no Prometheus cost. Several limiters on one Registerer
// share one collector: counts and gauges are summed, signals come from the process.
//
// # Defaults
//
// The zero Config is meant to be safe to enable everywhere: Adaptive, limit from
// max(16, 4×GOMAXPROCS) up to 1000 (it grows only while messages wait, so it does not
// throttle fast handlers), no byte limit, memory limits from GOMEMLIMIT, scheduling
// latency 20 ms, GC CPU 0.3, handler latency 5×, samples every 250 ms, prefetch 100.
//
// # Concurrency
//
// A Limiter is safe for concurrent use: any number of handlers and goroutines may run
// its middleware at once. A message that finds a free slot costs a few atomic
// operations and no allocation (70-100 ns on a 2-core machine; see BENCHMARKS.md);
// only messages that must wait take a mutex. New starts no goroutine; Run is the only
// goroutine the package uses (one Run at a time, ErrRunning otherwise), and it calls
// the FlowControl methods and the hooks. Close is idempotent: it stops Run, waiting up
// to 5 s for it to restore the subscriptions, and fails waiting messages.
package qos
