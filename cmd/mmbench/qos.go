package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

// Shared plumbing of the qos-* scenarios (qos_*.go): one consumer run through a
// Watermill router on a rabbitmq.Subscriber, with or without a qos.Limiter, plus the
// process probes (memory peaks, responsiveness) the scenarios report.

// qosRun describes one consumer run.
type qosRun struct {
	url      string
	queue    string
	n        int // stop after n messages handled (0: until ctx ends)
	prefetch int
	limiter  *qos.Config // nil = no QoS middleware
	handler  func(msg *message.Message) error
	name     string // connection name
	// progress, when set, is called with the running count from the handler.
	progress func(handled int64)
	// ready, when set, is called once the router runs.
	ready func()
	// trace prints the limiter's state every 250 ms to stderr (-opt trace=on).
	trace bool
}

// qosOut is what a run measured.
type qosOut struct {
	elapsed  time.Duration
	handled  int64
	inProc   []time.Duration // per message: router entry (before QoS) to handler end
	maxLimit int
	lastLim  int
	states   map[qos.State]int // samples per state
	pauses   int
	pressure int
	flowOps  int64 // FlowControl calls made by the limiter
	probe    probeStats
	mem      memPeaks
}

// runQoSConsumer consumes r.n messages from an existing, filled queue.
func runQoSConsumer(ctx context.Context, r qosRun) (qosOut, error) {
	var out qosOut
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: r.url, Name: r.name})
	if err != nil {
		return out, err
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		return out, err
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: r.prefetch})
	if err != nil {
		return out, err
	}
	defer sub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return out, err
	}

	var (
		latMu sync.Mutex
		lats  = make([]time.Duration, 0, max(r.n, 0))
	)
	// Outermost: time in the process, QoS wait included.
	router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			t := time.Now()
			msgs, err := h(msg)
			d := time.Since(t)
			latMu.Lock()
			lats = append(lats, d)
			latMu.Unlock()
			return msgs, err
		}
	})
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var (
		lim              *qos.Limiter
		flow             *countingFlow
		limDone          = make(chan error, 1)
		pressures, stops atomic.Int64 // written by the limiter's hooks
	)
	if r.limiter != nil {
		c := *r.limiter
		c.OnPressure = func(tr qos.Transition) {
			if r.trace {
				fmt.Fprintf(os.Stderr, "qos: %v -> %v %v limit %d signals %+v handler %v\n", tr.From, tr.To, tr.Reasons, tr.Limit, tr.Signals, tr.HandlerLatency)
			}
			pressures.Add(1)
			if tr.To == qos.Stopped {
				stops.Add(1)
			}
		}
		if lim, err = qos.New(c); err != nil {
			return out, err
		}
		defer lim.Close()
		router.AddMiddleware(lim.Middleware)
		flow = &countingFlow{FlowControl: sub, trace: r.trace}
		lim.Attach(flow, "")
		go func() { limDone <- lim.Run(runCtx) }()
	} else {
		limDone <- nil
	}

	var handled atomic.Int64
	all := make(chan struct{})
	router.AddConsumerHandler(r.name, r.queue, sub, func(msg *message.Message) error {
		if err := r.handler(msg); err != nil {
			return err
		}
		c := handled.Add(1)
		if r.progress != nil {
			r.progress(c)
		}
		if c == int64(r.n) {
			close(all)
		}
		return nil
	})

	probe := startProbe()
	mem := startMemSampler()
	type watched struct {
		states   map[qos.State]int
		maxLimit int
	}
	watchDone := make(chan watched, 1)
	go func() { // limiter watch, for the report; owns its results until it ends
		w := watched{states: map[qos.State]int{}}
		defer func() { watchDone <- w }()
		if lim == nil {
			return
		}
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				w.states[lim.State()]++
				w.maxLimit = max(w.maxLimit, lim.Limit())
				if r.trace && w.states[lim.State()]%5 == 0 {
					n, _ := lim.InFlight()
					fmt.Fprintf(os.Stderr, "qos: %v limit %d in flight %d handled %d signals %+v\n", lim.State(), lim.Limit(), n, handled.Load(), lim.LastSignals())
				}
			}
		}
	}()

	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(runCtx) }()
	select {
	case <-router.Running():
	case err := <-runErr:
		return out, fmt.Errorf("router stopped before running: %w", err)
	}
	if r.ready != nil {
		r.ready()
	}
	start := time.Now()
	wait := all
	if r.n <= 0 {
		wait = nil
	}
	select {
	case <-wait:
	case <-ctx.Done():
		if r.n > 0 {
			return out, fmt.Errorf("after %d of %d messages: %w", handled.Load(), r.n, ctx.Err())
		}
	case err := <-runErr:
		return out, fmt.Errorf("router stopped after %d messages: %v", handled.Load(), err)
	}
	out.elapsed = time.Since(start)
	out.handled = handled.Load()
	if lim != nil {
		out.lastLim = lim.Limit()
	}
	out.probe = probe.stop()
	out.mem = mem.stop()
	if err := router.Close(); err != nil {
		return out, err
	}
	stopAll()
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		return out, err
	}
	if err := <-limDone; err != nil {
		return out, err
	}
	w := <-watchDone
	out.states, out.maxLimit = w.states, w.maxLimit
	if flow != nil {
		out.flowOps = flow.calls.Load()
	}
	out.pressure, out.pauses = int(pressures.Load()), int(stops.Load())
	latMu.Lock()
	out.inProc = append([]time.Duration(nil), lats...)
	latMu.Unlock()
	sort.Slice(out.inProc, func(i, j int) bool { return out.inProc[i] < out.inProc[j] })
	return out, nil
}

// countingFlow counts (and with trace prints) the limiter's FlowControl calls.
type countingFlow struct {
	qos.FlowControl
	calls atomic.Int64
	trace bool
}

func (c *countingFlow) SetPrefetch(n int) error {
	c.calls.Add(1)
	if c.trace {
		fmt.Fprintf(os.Stderr, "qos: prefetch %d\n", n)
	}
	return c.FlowControl.SetPrefetch(n)
}

func (c *countingFlow) Pause() error {
	c.calls.Add(1)
	if c.trace {
		fmt.Fprintln(os.Stderr, "qos: pause")
	}
	return c.FlowControl.Pause()
}

func (c *countingFlow) Resume() error {
	c.calls.Add(1)
	if c.trace {
		fmt.Fprintln(os.Stderr, "qos: resume")
	}
	return c.FlowControl.Resume()
}

// probeStats: a goroutine that wants to run every 10 ms, and how late it ran: whether
// the process "keeps answering".
type probeStats struct {
	p99, max time.Duration
}

type probe struct {
	stopc chan struct{}
	done  chan probeStats
}

func startProbe() *probe {
	p := &probe{stopc: make(chan struct{}), done: make(chan probeStats, 1)}
	go func() {
		var lates []time.Duration
		next := time.Now().Add(10 * time.Millisecond)
		for {
			select {
			case <-p.stopc:
				sort.Slice(lates, func(i, j int) bool { return lates[i] < lates[j] })
				var s probeStats
				if len(lates) > 0 {
					s.p99 = lates[min(len(lates)-1, len(lates)*99/100)]
					s.max = lates[len(lates)-1]
				}
				p.done <- s
				return
			case <-time.After(time.Until(next)):
			}
			lates = append(lates, max(0, time.Since(next)))
			next = time.Now().Add(10 * time.Millisecond)
		}
	}()
	return p
}

func (p *probe) stop() probeStats { close(p.stopc); return <-p.done }

// memPeaks are the highs of the runtime's memory, sampled every 5 ms.
type memPeaks struct {
	heapObjects uint64 // /memory/classes/heap/objects:bytes (live and dead objects)
	retained    uint64 // live heap + non-heap: what qos calls memory in use
	mapped      uint64 // total - released: about the Go part of RSS
}

type memSampler struct {
	stopc chan struct{}
	done  chan memPeaks
}

func startMemSampler() *memSampler {
	m := &memSampler{stopc: make(chan struct{}), done: make(chan memPeaks, 1)}
	names := []string{"/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes", "/memory/classes/total:bytes",
		"/memory/classes/heap/released:bytes", "/memory/classes/heap/unused:bytes", "/memory/classes/heap/free:bytes"}
	s := make([]metrics.Sample, len(names))
	for i := range names {
		s[i].Name = names[i]
	}
	go func() {
		var pk memPeaks
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			obj, live, total, rel, unused, free := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64(),
				s[3].Value.Uint64(), s[4].Value.Uint64(), s[5].Value.Uint64()
			pk.heapObjects = max(pk.heapObjects, obj)
			pk.mapped = max(pk.mapped, total-rel)
			if heap := obj + unused + free + rel; total > heap {
				pk.retained = max(pk.retained, live+total-heap)
			}
			select {
			case <-m.stopc:
				m.done <- pk
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memSampler) stop() memPeaks { close(m.stopc); return <-m.done }

// vmHWM returns the process's peak resident set size (VmHWM), 0 when unknown.
func vmHWM() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(b uint64) float64 { return math.Round(float64(b)/(1<<20)*10) / 10 }

// spinner burns CPU for a fixed amount of work, calibrated once to last about d.
type spinner struct{ iters int }

var spinSink atomic.Uint64

func (s spinner) spin() {
	x := uint64(88172645463325252)
	for i := 0; i < s.iters; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	spinSink.Add(x & 1)
}

// calibrateSpinner returns a spinner whose spin takes about d of CPU on this machine
// (the best of a few tries, so that a busy neighbour does not inflate it).
func calibrateSpinner(d time.Duration) spinner {
	const probe = 2_000_000
	best := time.Duration(math.MaxInt64)
	for i := 0; i < 5; i++ {
		t := time.Now()
		spinner{iters: probe}.spin()
		best = min(best, time.Since(t))
	}
	return spinner{iters: max(1, int(float64(probe)*float64(d)/float64(best)))}
}

func optString(cfg config, key, def string) string {
	if v, ok := cfg.extra[key]; ok {
		return v
	}
	return def
}

func optBool(cfg config, key string, def bool) (bool, error) {
	v, ok := cfg.extra[key]
	if !ok {
		return def, nil
	}
	switch v {
	case "on", "1", "true", "yes":
		return true, nil
	case "off", "0", "false", "no":
		return false, nil
	}
	return false, fmt.Errorf("-opt %s=%s: want on or off", key, v)
}

// declareFilled declares a fresh durable queue and pre-fills it with n messages.
func declareFilled(ctx context.Context, url, kind string, n, size int) (string, error) {
	q := queueName(kind)
	conn, ch, err := dial(url)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return "", err
	}
	if n > 0 {
		if err := prefill(ctx, url, q, n, size); err != nil {
			deleteQueue(url, q)
			return "", err
		}
	}
	return q, nil
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }
