package qos

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	// ErrClosed is returned by Run after Close, and by the middleware (which then
	// Nacks the message) for messages that arrive or wait after Close.
	ErrClosed = errors.New("qos: limiter closed")
	// ErrRunning is returned by Run when another Run of the same Limiter is active.
	ErrRunning = errors.New("qos: limiter already running")
	// ErrCanceled is returned by the middleware (which then Nacks the message) when
	// the message's context ended while it waited for a slot. It wraps the context
	// error too, so errors.Is(err, context.Canceled) holds for a canceled context.
	ErrCanceled = errors.New("qos: message context ended while waiting for a slot")
)

// FlowControl is the broker side of back-pressure: a subscription whose prefetch can
// be changed and whose consumption can be paused and resumed. *rabbitmq.Subscriber
// satisfies it.
type FlowControl interface {
	SetPrefetch(n int) error
	Pause() error
	Resume() error
}

// Mode selects how the global limit is set.
type Mode int

const (
	// Adaptive (the zero value): the limit moves between MinInFlight and MaxInFlight
	// with the process signals.
	Adaptive Mode = iota
	// Static: the limit is MaxInFlight; only the memory limits act (stop above the
	// hard limit, lower prefetch above the soft one).
	Static
)

func (m Mode) String() string {
	if m == Static {
		return "static"
	}
	return "adaptive"
}

// RouteLimit limits the messages of one handler (route), on top of the global limit.
type RouteLimit struct {
	// MaxInFlight is the most messages of this route handled at once; 0 = no limit.
	MaxInFlight int
	// MaxBytesInFlight is the most payload bytes of this route handled at once; 0 =
	// no limit. A message larger than this still runs, alone.
	MaxBytesInFlight int64
}

// Transition is passed to the pressure and release hooks.
type Transition struct {
	From, To State
	// Reasons are the signals over their thresholds in the sample that caused the
	// transition (none for a release to Normal).
	Reasons Reason
	// Limit is the global limit after the transition (0 when stopped).
	Limit   int
	Signals Signals
	// HandlerLatency is the mean handler time over the last sample interval.
	HandlerLatency time.Duration
	At             time.Time
}

// Config configures a Limiter. The zero value is a sane adaptive limiter.
type Config struct {
	// Mode: Adaptive (zero value) or Static.
	Mode Mode
	// MaxInFlight is the most messages handled at once, over all handlers. Static
	// mode: the limit, 0 -> 100. Adaptive mode: the ceiling, 0 -> 1000.
	MaxInFlight int
	// MinInFlight is the adaptive floor; 0 -> 1.
	MinInFlight int
	// InitialInFlight is the adaptive starting limit; 0 -> max(16, 4×GOMAXPROCS),
	// clamped to [MinInFlight, MaxInFlight].
	InitialInFlight int
	// MaxBytesInFlight is the most payload bytes (len(msg.Payload)) handled at once,
	// over all handlers; 0 = no limit. A larger message still runs, alone.
	MaxBytesInFlight int64
	// Routes holds per-route limits by handler name (message.HandlerNameFromCtx).
	// Handlers not in the map have only the global limits. Nil = none.
	Routes map[string]RouteLimit

	// MemorySoftLimit and MemoryHardLimit are compared with the memory in use (see
	// Signals.MemoryUsed). Above the soft limit the adaptive limit halves each sample
	// and prefetch is lowered; above the hard limit intake stops. 0 -> 65 % and 80 %
	// of GOMEMLIMIT when it is set (read at each sample), else no memory limit; with
	// only the hard limit set, soft -> 65/80 of it. -1 turns memory signals off.
	MemorySoftLimit, MemoryHardLimit int64
	// SchedLatencyTarget: pressure when the p99 goroutine scheduling latency is at or
	// above it. 0 -> 20 ms; negative = off. Adaptive mode only.
	SchedLatencyTarget time.Duration
	// GCCPUTarget: pressure when garbage collection takes this share of the CPU or
	// more. 0 -> 0.3; negative = off. Adaptive mode only.
	GCCPUTarget float64
	// HandlerLatencyTolerance: pressure when messages wait for slots and the mean
	// handler time is this many times its baseline or more. 0 -> 5; negative = off.
	// Adaptive mode only.
	HandlerLatencyTolerance float64
	// SampleInterval is the period of Run's sampling loop; 0 -> 250 ms.
	SampleInterval time.Duration

	// Prefetch is the prefetch restored on attached subscriptions when pressure is
	// released, and the most they are given under pressure; 0 -> 100 (the rabbitmq
	// subscriber's default). Set it to the prefetch your subscribers use.
	Prefetch int

	// OnPressure runs when the state gets worse (Normal -> Pressure or Stopped,
	// Pressure -> Stopped); OnRelease when it gets better. Both run on the goroutine
	// that called Run, after the limit and flow control were applied, never under a
	// lock; a slow hook delays the next sample. Nil = none.
	OnPressure, OnRelease func(Transition)

	// Signals replaces the runtime/metrics source (tests, custom signals). Nil = the
	// Go runtime's metrics.
	Signals SignalSource
	// Registerer receives the metrics; nil = no metrics.
	Registerer prometheus.Registerer
	// Logger; nil = watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *Config) setDefaults() {
	if c.Mode == Static && c.MaxInFlight == 0 {
		c.MaxInFlight = 100
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 1000
	}
	if c.MinInFlight == 0 {
		c.MinInFlight = 1
	}
	if c.InitialInFlight == 0 {
		c.InitialInFlight = min(max(16, 4*runtime.GOMAXPROCS(0), c.MinInFlight), max(c.MaxInFlight, c.MinInFlight))
	}
	if c.SchedLatencyTarget == 0 {
		c.SchedLatencyTarget = 20 * time.Millisecond
	}
	if c.GCCPUTarget == 0 {
		c.GCCPUTarget = 0.3
	}
	if c.HandlerLatencyTolerance == 0 {
		c.HandlerLatencyTolerance = 5
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = 250 * time.Millisecond
	}
	if c.Prefetch == 0 {
		c.Prefetch = 100
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every configuration problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Mode != Adaptive && c.Mode != Static {
		errs = append(errs, fmt.Errorf("qos: unknown Mode %d", c.Mode))
	}
	if c.MaxInFlight < 0 || c.MaxInFlight > countMask {
		errs = append(errs, fmt.Errorf("qos: MaxInFlight %d out of range [0, %d]", c.MaxInFlight, countMask))
	}
	if c.MinInFlight < 0 {
		errs = append(errs, fmt.Errorf("qos: MinInFlight %d is negative", c.MinInFlight))
	}
	if c.MaxInFlight > 0 && c.MinInFlight > c.MaxInFlight {
		errs = append(errs, fmt.Errorf("qos: MinInFlight %d above MaxInFlight %d", c.MinInFlight, c.MaxInFlight))
	}
	if c.InitialInFlight < 0 || (c.MaxInFlight > 0 && c.InitialInFlight > c.MaxInFlight) ||
		(c.InitialInFlight > 0 && c.InitialInFlight < c.MinInFlight) {
		errs = append(errs, fmt.Errorf("qos: InitialInFlight %d outside [MinInFlight, MaxInFlight]", c.InitialInFlight))
	}
	if c.MaxBytesInFlight < 0 {
		errs = append(errs, fmt.Errorf("qos: MaxBytesInFlight %d is negative", c.MaxBytesInFlight))
	}
	for name, r := range c.Routes {
		if r.MaxInFlight < 0 || r.MaxInFlight > countMask || r.MaxBytesInFlight < 0 {
			errs = append(errs, fmt.Errorf("qos: route %q: negative or too large limit", name))
		}
	}
	if c.MemorySoftLimit < -1 || c.MemoryHardLimit < -1 {
		errs = append(errs, errors.New("qos: memory limits must be positive, 0 (default) or -1 (off)"))
	}
	if (c.MemorySoftLimit == -1) != (c.MemoryHardLimit == -1) && c.MemorySoftLimit != 0 && c.MemoryHardLimit != 0 {
		errs = append(errs, errors.New("qos: turn memory limits off with -1 on both MemorySoftLimit and MemoryHardLimit"))
	}
	if c.MemorySoftLimit > 0 && c.MemoryHardLimit > 0 && c.MemorySoftLimit > c.MemoryHardLimit {
		errs = append(errs, fmt.Errorf("qos: MemorySoftLimit %d above MemoryHardLimit %d", c.MemorySoftLimit, c.MemoryHardLimit))
	}
	if math.IsNaN(c.GCCPUTarget) || c.GCCPUTarget > 1 {
		errs = append(errs, fmt.Errorf("qos: GCCPUTarget %v must be at most 1", c.GCCPUTarget))
	}
	if math.IsNaN(c.HandlerLatencyTolerance) || (c.HandlerLatencyTolerance > 0 && c.HandlerLatencyTolerance < 1) {
		errs = append(errs, fmt.Errorf("qos: HandlerLatencyTolerance %v must be >= 1 (or negative: off)", c.HandlerLatencyTolerance))
	}
	if c.SampleInterval < 0 {
		errs = append(errs, fmt.Errorf("qos: SampleInterval %v is negative", c.SampleInterval))
	}
	if c.Prefetch < 0 {
		errs = append(errs, fmt.Errorf("qos: Prefetch %d is negative", c.Prefetch))
	}
	return errors.Join(errs...)
}

// Limiter limits how many messages (and payload bytes) the handlers it wraps run at
// once, adapts the limit to the process's health, and applies back-pressure to the
// attached subscriptions. See the package documentation.
type Limiter struct {
	cfg    Config
	logger watermill.LoggerAdapter
	global *gate
	routes map[string]*gate // nil without per-route limits; read-only after New
	pol    policy
	source SignalSource
	gc     func() // runtime.GC; replaced in tests
	stats  *stats

	// Published by the sampling goroutine, read anywhere.
	limit   atomic.Int64
	state   atomic.Int32
	lastSig atomic.Pointer[Signals]
	lastLat atomic.Int64 // mean handler ns in the last interval
	// pausedSinceNs is when intake stopped (unix ns), set by the sampling goroutine.
	pausedSinceNs atomic.Int64
	// latSumNs sums the handler time of messages that ended since the last sample;
	// their count is derived from the admitted and in-flight counts, to spare the
	// hot path an atomic add.
	latSumNs  atomic.Int64
	collector *collector

	mu       sync.Mutex
	attached []*attachment
	running  bool
	closed   bool
	closing  chan struct{} // closed by Close
	runDone  chan struct{} // closed when an active Run returns

	// Owned by the sampling goroutine.
	ps           policyState
	lastGC       uint64
	noGCSamples  int
	prevAdmitted uint64
	prevInFlight int
	// normalSamples counts the samples in a row in the Normal state.
	normalSamples int
	inFlightAtGC  int
}

type attachment struct {
	fc    FlowControl
	route string
	mu    sync.Mutex // serialises the FlowControl calls of this attachment
	// Under mu: what the limiter last applied.
	prefetch int  // 0 = never changed by the limiter
	paused   bool // paused by the limiter
	detached bool
}

// New checks cfg and builds a Limiter. It does no I/O and starts no goroutine.
func New(cfg Config) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		cfg:     cfg,
		logger:  cfg.Logger.With(watermill.LogFields{"component": "qos"}),
		source:  cfg.Signals,
		gc:      runtime.GC,
		stats:   newStats(),
		closing: make(chan struct{}),
	}
	if l.source == nil {
		l.source = newRuntimeSignals()
	}
	l.pol = policy{
		adaptive: cfg.Mode == Adaptive,
		min:      cfg.MinInFlight,
		max:      cfg.MaxInFlight,
		static:   cfg.MaxInFlight,
		softMem:  max(cfg.MemorySoftLimit, 0),
		hardMem:  max(cfg.MemoryHardLimit, 0),
		memOff:   cfg.MemorySoftLimit == -1 || cfg.MemoryHardLimit == -1,
	}
	if cfg.SchedLatencyTarget > 0 {
		l.pol.schedTarget = cfg.SchedLatencyTarget
	}
	if cfg.GCCPUTarget > 0 {
		l.pol.gcTarget = cfg.GCCPUTarget
	}
	if cfg.HandlerLatencyTolerance > 0 {
		l.pol.latTolerance = cfg.HandlerLatencyTolerance
	}
	start := cfg.MaxInFlight
	if cfg.Mode == Adaptive {
		start = cfg.InitialInFlight
	}
	l.ps = policyState{limit: start, state: Normal}
	l.global = newGate(start, cfg.MaxBytesInFlight)
	l.limit.Store(int64(start))
	l.lastSig.Store(&Signals{})
	for name, r := range cfg.Routes {
		if r.MaxInFlight == 0 && r.MaxBytesInFlight == 0 {
			continue
		}
		if l.routes == nil {
			l.routes = make(map[string]*gate, len(cfg.Routes))
		}
		lim := r.MaxInFlight
		if lim == 0 {
			lim = countMask
		}
		l.routes[name] = newGate(lim, r.MaxBytesInFlight)
	}
	if cfg.Registerer != nil {
		c, err := registerCollector(cfg.Registerer)
		if err != nil {
			return nil, err
		}
		c.add(l)
		l.collector = c
	}
	return l, nil
}

// Middleware wraps h: each message waits for a slot of its route (when Config.Routes
// limits its handler) and then for a global slot before h runs, and gives them back
// when h returns. When msg.Context() ends while the message waits, or the Limiter is
// closed, the message is Nacked and an error wrapping ErrCanceled (or ErrClosed) is
// returned.
func (l *Limiter) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return l.wrap(h, "", true)
}

// HandlerMiddleware is Middleware for the handler called name, for a handler that does
// not run on a Watermill router (the handler name is then not in the message's
// context): Config.Routes[name] limits it.
func (l *Limiter) HandlerMiddleware(name string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc { return l.wrap(h, name, false) }
}

// wrap is Middleware for the handler name, or for the one in the message's context
// when fromCtx.
func (l *Limiter) wrap(h message.HandlerFunc, name string, fromCtx bool) message.HandlerFunc {
	var fixed *gate
	if !fromCtx && l.routes != nil {
		fixed = l.routes[name]
	}
	return func(msg *message.Message) ([]*message.Message, error) {
		n := clampBytes(len(msg.Payload))
		var (
			rg     = fixed
			waited time.Duration
			err    error
		)
		if fromCtx && l.routes != nil {
			rg = l.routes[message.HandlerNameFromCtx(msg.Context())]
		}
		if rg != nil {
			if waited, err = rg.acquire(msg.Context(), n); err != nil {
				return nil, l.refuse(msg, waited, err)
			}
		}
		w, err := l.global.acquire(msg.Context(), n)
		waited += w
		if err != nil {
			if rg != nil {
				rg.release(n)
			}
			return nil, l.refuse(msg, waited, err)
		}
		l.stats.admit(waited)
		start := time.Now()
		defer l.done(rg, n, start)
		return h(msg)
	}
}

func (l *Limiter) refuse(msg *message.Message, waited time.Duration, err error) error {
	l.stats.refuse(waited)
	msg.Nack()
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCanceled, err)
}

func (l *Limiter) done(rg *gate, n uint64, start time.Time) {
	l.latSumNs.Add(int64(time.Since(start)))
	l.global.release(n)
	if rg != nil {
		rg.release(n)
	}
}

// Attach registers a subscription for back-pressure: under pressure its prefetch is
// lowered to its share of the limit (the limit divided by the number of attached
// subscriptions, at most the route's MaxInFlight when route names a limited handler;
// "" = no route), above the hard memory limit it is paused, and when pressure is
// released it is resumed and its prefetch set back to Config.Prefetch. The calls are
// made by the goroutine running Run. The returned func detaches it (resuming it and
// restoring its prefetch if the limiter had changed them); it is idempotent.
func (l *Limiter) Attach(fc FlowControl, route string) (detach func()) {
	a := &attachment{fc: fc, route: route}
	l.mu.Lock()
	l.attached = append(l.attached, a)
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			for i, x := range l.attached {
				if x == a {
					l.attached = append(l.attached[:i:i], l.attached[i+1:]...)
					break
				}
			}
			l.mu.Unlock()
			l.restore(a, true, false)
		})
	}
}

// Limit returns the current global limit (0 while intake is stopped).
func (l *Limiter) Limit() int { return int(l.limit.Load()) }

// State returns the current state.
func (l *Limiter) State() State { return State(l.state.Load()) }

// InFlight returns the messages and payload bytes being handled now.
func (l *Limiter) InFlight() (messages int, bytes int64) { return l.global.inFlight() }

// LastSignals returns the signals of the latest sample (zero before the first).
func (l *Limiter) LastSignals() Signals { return *l.lastSig.Load() }

// Run samples the signals every Config.SampleInterval, adjusts the limit, applies
// back-pressure to the attached subscriptions and runs the hooks, until ctx ends or
// Close is called; then it resumes what it paused, restores prefetch, lifts a stop,
// and returns nil. Without Run the limits stay where they are (static limits work
// without it). It returns ErrRunning when another Run is active and ErrClosed after
// Close.
func (l *Limiter) Run(ctx context.Context) error {
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return ErrClosed
	case l.running:
		l.mu.Unlock()
		return ErrRunning
	}
	l.running = true
	done := make(chan struct{})
	l.runDone = done
	l.mu.Unlock()
	defer func() {
		l.stopped()
		l.mu.Lock()
		l.running = false
		l.mu.Unlock()
		close(done)
	}()

	l.logger.Info("QoS limiter running", watermill.LogFields{"mode": l.cfg.Mode.String(), "limit": l.Limit()})
	t := time.NewTicker(l.cfg.SampleInterval)
	defer t.Stop()
	l.sample(time.Now()) // primes the deltas
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.closing:
			return nil
		case now := <-t.C:
			l.sample(now)
		}
	}
}

// Close stops Run (waiting up to 5 s for it to restore the subscriptions), fails the
// messages waiting for a slot, and later ones, with ErrClosed (they are Nacked), and
// takes the limiter out of the metrics (the collector stays registered for other
// limiters). Messages in handlers finish normally. Idempotent; always returns nil.
func (l *Limiter) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closing)
	done := l.runDone
	running := l.running
	l.mu.Unlock()
	if running {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	l.global.close()
	for _, g := range l.routes {
		g.close()
	}
	if l.collector != nil {
		l.collector.remove(l)
	}
	return nil
}

// sample runs one step of the policy. Sampling goroutine only.
func (l *Limiter) sample(now time.Time) {
	sig := l.source.Sample()
	soft, hard := l.pol.memLimits(sig)
	sum := l.latSumNs.Swap(0)
	admitted := l.stats.admitted.Load()
	inFlightNow, _ := l.global.inFlight()
	cnt := max(0, int64(admitted-l.prevAdmitted)-int64(inFlightNow-l.prevInFlight))
	l.prevAdmitted, l.prevInFlight = admitted, inFlightNow
	// Saturated: a message queued for a global slot during the interval, or messages
	// are still queued from before (they may all have arrived long ago).
	saturated := l.global.takeWaited() || l.global.waiting.Load() > 0
	ob := observation{sig: sig, latCount: cnt, saturated: saturated, soft: soft, hard: hard}
	if cnt > 0 {
		ob.latMean = time.Duration(sum / cnt)
	}
	prev := l.ps
	next, reasons := l.pol.step(prev, ob)
	l.ps = next
	eff := effectiveLimit(next)
	l.global.setLimit(eff)
	l.limit.Store(int64(eff))
	l.state.Store(int32(next.state))
	l.lastSig.Store(&sig)
	l.lastLat.Store(int64(ob.latMean))
	l.stats.setMemLimits(soft, hard)

	// The live heap is only measured by a GC: while intake is stopped (little
	// allocation, so no GC), collect so that the fall of memory is seen; under
	// pressure, collect if no cycle ran for a second.
	if sig.GCCycles != l.lastGC {
		l.noGCSamples = 0
	} else {
		l.noGCSamples++
	}
	l.lastGC = sig.GCCycles
	// In the stopped state, collect when a handler ended since the last forced
	// collection or every 2 s, not on every sample of a long stop.
	inFlight, _ := l.global.inFlight()
	if l.noGCSamples > 0 {
		quiet := time.Duration(l.noGCSamples) * l.cfg.SampleInterval
		if (next.state == Stopped && (inFlight < l.inFlightAtGC || quiet >= 2*time.Second)) ||
			(next.state == Pressure && reasons&ReasonMemorySoft != 0 && quiet >= time.Second) {
			l.gc()
			l.noGCSamples = 0
			l.inFlightAtGC = inFlight
		}
	}
	if next.state == Stopped && prev.state != Stopped {
		l.inFlightAtGC = inFlight
	}

	switch {
	case next.state == Stopped && prev.state != Stopped:
		l.pausedSinceNs.Store(now.UnixNano())
		l.stats.paused.Add(1)
	case next.state != Stopped && prev.state == Stopped:
		l.stats.pausedNs.Add(now.UnixNano() - l.pausedSinceNs.Swap(0))
	}

	if next.state == Normal {
		l.normalSamples++
	} else {
		l.normalSamples = 0
	}
	l.applyFlow(next)

	if next.state != prev.state {
		tr := Transition{From: prev.state, To: next.state, Reasons: reasons, Limit: eff,
			Signals: sig, HandlerLatency: ob.latMean, At: now}
		fields := watermill.LogFields{"from": prev.state.String(), "to": next.state.String(),
			"reasons": reasons.String(), "limit": eff, "memory_used": sig.MemoryUsed,
			"sched_latency_p99": sig.SchedLatencyP99.String(), "gc_cpu": sig.GCCPUFraction}
		if next.state > prev.state {
			l.logger.Info("QoS pressure", fields)
			if l.cfg.OnPressure != nil {
				l.cfg.OnPressure(tr)
			}
		} else {
			l.logger.Info("QoS pressure released", fields)
			if l.cfg.OnRelease != nil {
				l.cfg.OnRelease(tr)
			}
		}
	}
}

// applyFlow brings every attached subscription to what the state asks for.
func (l *Limiter) applyFlow(st policyState) {
	l.mu.Lock()
	atts := append([]*attachment(nil), l.attached...)
	l.mu.Unlock()
	if len(atts) == 0 {
		return
	}
	share := max(1, (st.limit+len(atts)-1)/len(atts))
	for _, a := range atts {
		switch st.state {
		case Stopped:
			l.pause(a)
		case Pressure:
			l.setFlow(a, l.pressurePrefetch(share, a.route))
		default:
			// Resume at once, but keep a lowered prefetch until the state has been
			// Normal for restoreAfter: a state flapping at a threshold would otherwise
			// replace the broker consumer twice a sample.
			if time.Duration(l.normalSamples)*l.cfg.SampleInterval < restoreAfter {
				l.resumeOnly(a)
			} else {
				l.restore(a, false, false)
			}
		}
	}
}

// restoreAfter is how long the state must stay Normal before prefetch is restored.
const restoreAfter = time.Second

// resumeOnly resumes a subscription the limiter paused, leaving its prefetch.
func (l *Limiter) resumeOnly(a *attachment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.paused || a.detached {
		return
	}
	if err := a.fc.Resume(); err != nil {
		l.logger.Error("QoS: resuming a subscription failed", err, watermill.LogFields{"route": a.route})
		return
	}
	a.paused = false
}

func (l *Limiter) pause(a *attachment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.paused || a.detached {
		return
	}
	if err := a.fc.Pause(); err != nil {
		l.logger.Error("QoS: pausing a subscription failed", err, watermill.LogFields{"route": a.route})
		return
	}
	a.paused = true
}

// pressurePrefetch is the prefetch of a subscription under pressure: twice its share
// of the limit (so that its handlers never starve waiting for the broker's next
// delivery), at most Config.Prefetch.
func (l *Limiter) pressurePrefetch(share int, route string) int {
	if r, ok := l.cfg.Routes[route]; ok && r.MaxInFlight > 0 {
		share = min(share, r.MaxInFlight)
	}
	return max(1, min(2*share, l.cfg.Prefetch))
}

// setFlow sets the prefetch to p and resumes the subscription if it was paused.
func (l *Limiter) setFlow(a *attachment, p int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detached {
		return
	}
	// A prefetch change replaces the broker consumer: skip changes under a quarter.
	if a.prefetch == 0 || p*4 < a.prefetch*3 || p*4 > a.prefetch*5 {
		if err := a.fc.SetPrefetch(p); err != nil {
			l.logger.Error("QoS: setting prefetch failed", err, watermill.LogFields{"route": a.route, "prefetch": p})
			return
		}
		a.prefetch = p
	}
	if a.paused {
		if err := a.fc.Resume(); err != nil {
			l.logger.Error("QoS: resuming a subscription failed", err, watermill.LogFields{"route": a.route})
			return
		}
		a.paused = false
	}
}

// restore undoes what the limiter did to a subscription: prefetch back to
// Config.Prefetch, resumed. quiet logs failures at debug level (at the end of Run the
// subscription is often closed already).
func (l *Limiter) restore(a *attachment, detach, quiet bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detached {
		return
	}
	logErr := func(msg string, err error) {
		if quiet {
			l.logger.Debug(msg, watermill.LogFields{"route": a.route, "error": err.Error()})
		} else {
			l.logger.Error(msg, err, watermill.LogFields{"route": a.route})
		}
	}
	if a.prefetch != 0 && a.prefetch != l.cfg.Prefetch {
		if err := a.fc.SetPrefetch(l.cfg.Prefetch); err != nil {
			logErr("QoS: restoring prefetch failed", err)
		} else {
			a.prefetch = 0
		}
	}
	if a.paused {
		if err := a.fc.Resume(); err != nil {
			logErr("QoS: resuming a subscription failed", err)
		} else {
			a.paused = false
		}
	}
	a.detached = detach
}

// stopped runs when Run returns: without a sampler nothing would lift a stop, so the
// limiter goes back to Normal with its last limit and releases the subscriptions.
func (l *Limiter) stopped() {
	prev := l.ps
	if prev.state == Stopped {
		l.stats.pausedNs.Add(time.Now().UnixNano() - l.pausedSinceNs.Swap(0))
	}
	l.ps.state = Normal
	l.normalSamples = 0
	l.global.setLimit(l.ps.limit)
	l.limit.Store(int64(l.ps.limit))
	l.state.Store(int32(Normal))
	l.mu.Lock()
	atts := append([]*attachment(nil), l.attached...)
	l.mu.Unlock()
	for _, a := range atts {
		l.restore(a, false, true)
	}
}
