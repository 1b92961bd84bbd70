package qos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a scripted SignalSource.
type fakeSource struct {
	mu  sync.Mutex
	sig Signals
}

func (f *fakeSource) Sample() Signals {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sig
}

func (f *fakeSource) setMemory(used int64) {
	f.mu.Lock()
	f.sig.MemoryUsed = used
	f.mu.Unlock()
}

// fakeFlow records the FlowControl calls it gets. It is a fake of this package's own
// interface, not of a broker.
type fakeFlow struct {
	mu    sync.Mutex
	calls []string
	fail  error
}

func (f *fakeFlow) record(c string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.calls = append(f.calls, c)
	return nil
}
func (f *fakeFlow) SetPrefetch(n int) error { return f.record(fmt.Sprintf("prefetch %d", n)) }
func (f *fakeFlow) Pause() error            { return f.record("pause") }
func (f *fakeFlow) Resume() error           { return f.record("resume") }

// take returns and forgets the calls so far.
func (f *fakeFlow) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func newTestLimiter(t *testing.T, cfg Config) (*Limiter, *fakeSource, *int) {
	t.Helper()
	src := &fakeSource{sig: Signals{GOMAXPROCS: 2}}
	cfg.Signals = src
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gcs := new(int)
	l.gc = func() { *gcs++ }
	t.Cleanup(func() { _ = l.Close() })
	return l, src, gcs
}

func wantCalls(t *testing.T, f *fakeFlow, want ...string) {
	t.Helper()
	if got := f.take(); !slices.Equal(got, want) {
		t.Fatalf("flow control calls = %q, want %q", got, want)
	}
}

// blockingHandler lets the test decide when each message finishes.
type blockingHandler struct {
	started chan string
	release chan struct{}
}

func newBlockingHandler() *blockingHandler {
	return &blockingHandler{started: make(chan string, 100), release: make(chan struct{})}
}

func (b *blockingHandler) handle(msg *message.Message) ([]*message.Message, error) {
	b.started <- msg.UUID
	<-b.release
	return nil, nil
}

func TestBackPressure(t *testing.T) {
	var transitions []Transition
	hook := func(tr Transition) { transitions = append(transitions, tr) }
	l, src, gcs := newTestLimiter(t, Config{
		InitialInFlight: 40,
		MemorySoftLimit: 650, MemoryHardLimit: 800,
		Prefetch:   50,
		Routes:     map[string]RouteLimit{"slow": {MaxInFlight: 3}},
		OnPressure: hook, OnRelease: hook,
	})
	all, slow := &fakeFlow{}, &fakeFlow{}
	l.Attach(all, "")
	l.Attach(slow, "slow")
	now := time.Unix(1000, 0)
	step := func(used int64) {
		src.setMemory(used)
		now = now.Add(250 * time.Millisecond)
		l.sample(now)
	}

	step(100)
	if l.State() != Normal || l.Limit() != 40 {
		t.Fatalf("state %v limit %d, want normal 40", l.State(), l.Limit())
	}
	wantCalls(t, all) // untouched while normal
	wantCalls(t, slow)

	step(700) // soft: halve, prefetch to the share
	if l.State() != Pressure || l.Limit() != 20 {
		t.Fatalf("state %v limit %d, want pressure 20", l.State(), l.Limit())
	}
	wantCalls(t, all, "prefetch 20") // twice the share of 20/2
	wantCalls(t, slow, "prefetch 6") // twice the route's 3

	// One message in flight when intake stops.
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	errs := make(chan error, 2)
	go func() { _, err := mw(message.NewMessage("m1", []byte("x"))); errs <- err }()
	<-h.started

	step(690) // still soft: 10, prefetch share 5 -> 10, a change of half: applied
	wantCalls(t, all, "prefetch 10")
	wantCalls(t, slow) // route: still 6
	a := &attachment{fc: all, prefetch: 10}
	l.setFlow(a, 12) // within a quarter of 10: skipped
	l.setFlow(a, 8)
	wantCalls(t, all)
	l.setFlow(a, 13)
	wantCalls(t, all, "prefetch 13")

	step(900) // hard: stop, pause
	if l.State() != Stopped || l.Limit() != 0 {
		t.Fatalf("state %v limit %d, want stopped 0", l.State(), l.Limit())
	}
	wantCalls(t, all, "pause")
	wantCalls(t, slow, "pause")
	go func() { _, err := mw(message.NewMessage("m2", []byte("y"))); errs <- err }()
	eventually(t, "m2 waits while stopped", func() bool { return l.global.waiting.Load() == 1 })

	gcBefore := *gcs
	h.release <- struct{}{} // m1 ends: memory may fall, a GC must tell
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	step(900)
	if *gcs != gcBefore+1 {
		t.Fatalf("forced GCs = %d, want %d (a handler ended while stopped)", *gcs, gcBefore+1)
	}
	step(900) // nothing ended, quiet < 2 s: no GC
	if *gcs != gcBefore+1 {
		t.Fatalf("forced GC on a quiet sample")
	}
	if got := l.global.waiting.Load(); got != 1 {
		t.Fatalf("m2 started while stopped (waiting %d)", got)
	}

	step(100) // memory back: resume at once, prefetch restored after a second of calm
	if l.State() != Normal || l.Limit() != 6 {
		t.Fatalf("state %v limit %d, want normal 6 (halved on stop to 5, +1 as m2 waits)", l.State(), l.Limit())
	}
	wantCalls(t, all, "resume")
	wantCalls(t, slow, "resume")
	for i := 0; i < 2; i++ {
		step(100)
	}
	wantCalls(t, all)
	step(100) // the 4th Normal sample: 4 × 250 ms
	wantCalls(t, all, "prefetch 50")
	wantCalls(t, slow, "prefetch 50")
	if id := <-h.started; id != "m2" {
		t.Fatalf("started %s, want m2", id)
	}
	h.release <- struct{}{}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}

	var got []string
	for _, tr := range transitions {
		got = append(got, fmt.Sprintf("%v>%v %v", tr.From, tr.To, tr.Reasons))
	}
	want := []string{"normal>pressure memory_soft", "pressure>stopped memory_hard", "stopped>normal none"}
	if !slices.Equal(got, want) {
		t.Fatalf("hook transitions %q, want %q", got, want)
	}
}

func TestFlowControlErrorsAreRetried(t *testing.T) {
	l, src, _ := newTestLimiter(t, Config{MemoryHardLimit: 800})
	fc := &fakeFlow{fail: errors.New("channel closed")}
	l.Attach(fc, "")
	src.setMemory(900)
	l.sample(time.Now())
	wantCalls(t, fc)
	fc.mu.Lock()
	fc.fail = nil
	fc.mu.Unlock()
	l.sample(time.Now())
	wantCalls(t, fc, "pause")
}

func TestDetachRestores(t *testing.T) {
	l, src, _ := newTestLimiter(t, Config{MemoryHardLimit: 800, Prefetch: 7})
	fc := &fakeFlow{}
	detach := l.Attach(fc, "")
	src.setMemory(700) // soft: 650
	l.sample(time.Now())
	src.setMemory(900)
	l.sample(time.Now())
	wantCalls(t, fc, "prefetch 7", "pause")
	detach()
	detach()
	wantCalls(t, fc, "resume") // prefetch 7 is Config.Prefetch: nothing to restore
	l.sample(time.Now())
	wantCalls(t, fc) // detached: left alone
}

// TestHooksRunOutsideLocks calls back into the limiter from the hooks: a hook run under
// one of the limiter's locks would deadlock here.
func TestHooksRunOutsideLocks(t *testing.T) {
	var l *Limiter
	called := make(chan State, 4)
	hook := func(tr Transition) {
		l.Attach(&fakeFlow{}, "")()
		_ = l.Limit()
		_, _ = l.InFlight()
		called <- tr.To
	}
	l, src, _ := newTestLimiter(t, Config{MemoryHardLimit: 800, OnPressure: hook, OnRelease: hook})
	l.Attach(&fakeFlow{}, "")
	src.setMemory(900)
	l.sample(time.Now())
	src.setMemory(0)
	l.sample(time.Now())
	if a, b := <-called, <-called; a != Stopped || b != Normal {
		t.Fatalf("hooks saw %v, %v", a, b)
	}
}

func TestRunLifecycle(t *testing.T) {
	src := &fakeSource{sig: Signals{GOMAXPROCS: 2, MemoryUsed: 900}}
	l, err := New(Config{MemoryHardLimit: 800, SampleInterval: time.Millisecond, Signals: src})
	if err != nil {
		t.Fatal(err)
	}
	l.gc = func() {}
	fc := &fakeFlow{}
	l.Attach(fc, "")
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(ctx) }()
	eventually(t, "stopped by the hard limit", func() bool { return l.State() == Stopped })
	if err := l.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Run gone: nothing would lift the stop, so it is lifted and the subscription resumed.
	if l.State() != Normal || l.Limit() == 0 {
		t.Fatalf("after Run: state %v limit %d", l.State(), l.Limit())
	}
	if calls := fc.take(); len(calls) < 2 || calls[0] != "pause" || calls[len(calls)-1] != "resume" {
		t.Fatalf("calls %q, want pause ... resume", calls)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestCloseStopsRunAndFailsWaiters(t *testing.T) {
	l, err := New(Config{Mode: Static, MaxInFlight: 1, SampleInterval: time.Millisecond,
		Signals: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(context.Background()) }()
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	go func() { _, _ = mw(message.NewMessage("a", nil)) }()
	<-h.started
	m := message.NewMessage("b", nil)
	errc := make(chan error, 1)
	go func() { _, err := mw(m); errc <- err }()
	eventually(t, "b waits", func() bool { return l.global.waiting.Load() == 1 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter: %v, want ErrClosed", err)
	}
	select {
	case <-m.Nacked():
	default:
		t.Fatal("waiter not Nacked")
	}
	close(h.release)
}

func TestMiddlewareCancelNacks(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 1})
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	go func() { _, _ = mw(message.NewMessage("a", nil)) }()
	<-h.started
	ctx, cancel := context.WithCancel(context.Background())
	m := message.NewMessage("b", []byte("payload"))
	m.SetContext(ctx)
	errc := make(chan error, 1)
	go func() { _, err := mw(m); errc <- err }()
	eventually(t, "b waits", func() bool { return l.global.waiting.Load() == 1 })
	cancel()
	err := <-errc
	if !errors.Is(err, ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrCanceled wrapping context.Canceled", err)
	}
	select {
	case <-m.Nacked():
	default:
		t.Fatal("canceled message not Nacked")
	}
	close(h.release)
	eventually(t, "a done", func() bool { n, _ := l.InFlight(); return n == 0 })
}

func TestMiddlewareBytesLimit(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 10, MaxBytesInFlight: 10})
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	go func() { _, _ = mw(message.NewMessage("a", make([]byte, 8))) }()
	<-h.started
	go func() { _, _ = mw(message.NewMessage("b", make([]byte, 8))) }()
	eventually(t, "b waits on bytes", func() bool { return l.global.waiting.Load() == 1 })
	if n, b := l.InFlight(); n != 1 || b != 8 {
		t.Fatalf("in flight %d msgs %d bytes, want 1, 8", n, b)
	}
	h.release <- struct{}{}
	if id := <-h.started; id != "b" {
		t.Fatalf("started %s", id)
	}
	h.release <- struct{}{}
	eventually(t, "all done", func() bool { n, _ := l.InFlight(); return n == 0 })
}

// burstSubscriber is a Watermill Subscriber that hands out all its messages at once
// without waiting for acks, so that the router runs them concurrently (gochannel
// delivers one message at a time per subscriber).
type burstSubscriber struct {
	msgs   map[string][]*message.Message
	closed chan struct{}
	once   sync.Once
}

func (s *burstSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ch := make(chan *message.Message, len(s.msgs[topic]))
	for _, m := range s.msgs[topic] {
		ch <- m
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.closed:
		}
		close(ch)
	}()
	return ch, nil
}

func (s *burstSubscriber) Close() error { s.once.Do(func() { close(s.closed) }); return nil }

// TestRouterPerRouteLimits runs a Watermill router with the middleware: the route of a
// message is its handler's name, and each route keeps to its own limit under the
// global one.
func TestRouterPerRouteLimits(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 5,
		Routes: map[string]RouteLimit{"narrow": {MaxInFlight: 2}}})
	sub := &burstSubscriber{msgs: map[string][]*message.Message{}, closed: make(chan struct{})}
	for i := 0; i < 20; i++ {
		sub.msgs["n"] = append(sub.msgs["n"], message.NewMessage(fmt.Sprintf("n%d", i), nil))
		sub.msgs["w"] = append(sub.msgs["w"], message.NewMessage(fmt.Sprintf("w%d", i), nil))
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(l.Middleware)
	var (
		mu              sync.Mutex
		cur, peak       = map[string]int{}, map[string]int{}
		total, peakAll  int
		done            = make(chan struct{}, 40)
		handlerNameSeen = map[string]bool{}
	)
	handler := func(route string) message.NoPublishHandlerFunc {
		return func(msg *message.Message) error {
			mu.Lock()
			handlerNameSeen[message.HandlerNameFromCtx(msg.Context())] = true
			cur[route]++
			total++
			peak[route] = max(peak[route], cur[route])
			peakAll = max(peakAll, total)
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
			mu.Lock()
			cur[route]--
			total--
			mu.Unlock()
			done <- struct{}{}
			return nil
		}
	}
	router.AddConsumerHandler("narrow", "n", sub, handler("narrow"))
	router.AddConsumerHandler("wide", "w", sub, handler("wide"))
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	for i := 0; i < 40; i++ {
		<-done
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	_ = sub.Close()
	mu.Lock()
	defer mu.Unlock()
	if !handlerNameSeen["narrow"] || !handlerNameSeen["wide"] {
		t.Fatalf("handler names in ctx: %v", handlerNameSeen)
	}
	if peak["narrow"] > 2 || peakAll > 5 {
		t.Fatalf("peaks: narrow %d (limit 2), all %d (limit 5)", peak["narrow"], peakAll)
	}
	if peak["wide"] < 2 {
		t.Fatalf("wide route never ran concurrently (peak %d): the test proves nothing", peak["wide"])
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, _, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 3, Registerer: reg, MemoryHardLimit: 800})
	b, src, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 4, Registerer: reg, MemoryHardLimit: 800})
	// b waits once.
	h := newBlockingHandler()
	mw := b.Middleware(h.handle)
	b.global.setLimit(0)
	errc := make(chan error, 1)
	go func() { _, err := mw(message.NewMessage("x", []byte("abc"))); errc <- err }()
	eventually(t, "x waits", func() bool { return b.global.waiting.Load() == 1 })
	b.global.setLimit(4)
	<-h.started
	_ = a

	expected := `
# HELP micromessaging_qos_in_flight Messages being handled now.
# TYPE micromessaging_qos_in_flight gauge
micromessaging_qos_in_flight 1
# HELP micromessaging_qos_in_flight_bytes Payload bytes of the messages being handled now.
# TYPE micromessaging_qos_in_flight_bytes gauge
micromessaging_qos_in_flight_bytes 3
# HELP micromessaging_qos_limit Current global limit on messages handled at once (0 while intake is stopped).
# TYPE micromessaging_qos_limit gauge
micromessaging_qos_limit 7
# HELP micromessaging_qos_throttled_total Messages that had to wait for a slot.
# TYPE micromessaging_qos_throttled_total counter
micromessaging_qos_throttled_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected),
		"micromessaging_qos_in_flight", "micromessaging_qos_in_flight_bytes",
		"micromessaging_qos_limit", "micromessaging_qos_throttled_total"); err != nil {
		t.Fatal(err)
	}
	close(h.release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	src.setMemory(900)
	b.sample(time.Now())
	expected = `
# HELP micromessaging_qos_paused_total Times intake was stopped (hard memory limit) and subscriptions paused.
# TYPE micromessaging_qos_paused_total counter
micromessaging_qos_paused_total 1
# HELP micromessaging_qos_state 1 for the limiter's current state (summed over limiters).
# TYPE micromessaging_qos_state gauge
micromessaging_qos_state{state="normal"} 1
micromessaging_qos_state{state="pressure"} 0
micromessaging_qos_state{state="stopped"} 1
# HELP micromessaging_qos_memory_used_bytes Memory in use: live heap after the last GC plus non-heap runtime memory.
# TYPE micromessaging_qos_memory_used_bytes gauge
micromessaging_qos_memory_used_bytes 900
# HELP micromessaging_qos_wait_seconds Time messages waited for a slot before their handler ran.
# TYPE micromessaging_qos_wait_seconds histogram
`
	// The histogram's buckets depend on the wait; check the rest and its count.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Split(expected, "# HELP micromessaging_qos_wait")[0]),
		"micromessaging_qos_paused_total", "micromessaging_qos_state", "micromessaging_qos_memory_used_bytes"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "micromessaging_qos_wait_seconds" {
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 1 {
				t.Fatalf("wait histogram count %d, want 1", c)
			}
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "micromessaging_qos_limit"); err != nil || n != 1 {
		t.Fatalf("after closing one limiter: %d series, %v", n, err)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{MaxInFlight: -1},
		{MinInFlight: 10, MaxInFlight: 5},
		{InitialInFlight: 50, MaxInFlight: 10},
		{MaxBytesInFlight: -1},
		{MemorySoftLimit: 10, MemoryHardLimit: 5},
		{MemorySoftLimit: -2},
		{GCCPUTarget: 2},
		{HandlerLatencyTolerance: 0.5},
		{Routes: map[string]RouteLimit{"x": {MaxInFlight: -1}}},
		{Mode: 7},
	}
	for i, c := range bad {
		if _, err := New(c); err == nil {
			t.Errorf("config %d %+v: New accepted it", i, c)
		}
	}
	err := Config{MaxInFlight: -1, MaxBytesInFlight: -1}.Validate()
	if err == nil || !strings.Contains(err.Error(), "MaxInFlight") || !strings.Contains(err.Error(), "MaxBytesInFlight") {
		t.Fatalf("Validate should report every problem: %v", err)
	}
	l, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Limit() < 16 || l.cfg.MaxInFlight != 1000 || l.State() != Normal {
		t.Fatalf("defaults: limit %d max %d state %v", l.Limit(), l.cfg.MaxInFlight, l.State())
	}
	s, err := New(Config{Mode: Static})
	if err != nil {
		t.Fatal(err)
	}
	if s.Limit() != 100 {
		t.Fatalf("static default limit %d, want 100", s.Limit())
	}
}

// TestHandlerMiddlewareRouteLimit: HandlerMiddleware applies the route limit of the
// name it is given, whatever the message's context says; Middleware reads the name
// from the context, so a message without one has only the global limit.
func TestHandlerMiddlewareRouteLimit(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{Mode: Static, MaxInFlight: 10,
		Routes: map[string]RouteLimit{"narrow": {MaxInFlight: 1}}})
	h := newBlockingHandler()
	named := l.HandlerMiddleware("narrow")(h.handle)
	go func() { _, _ = named(message.NewMessage("a", nil)) }()
	if got := <-h.started; got != "a" {
		t.Fatalf("started %s", got)
	}
	go func() { _, _ = named(message.NewMessage("b", nil)) }()
	eventually(t, "b waits for the route slot", func() bool { return l.routes["narrow"].waiting.Load() == 1 })
	// Middleware finds no handler name in this context: only the global limit applies.
	plain := l.Middleware(h.handle)
	go func() { _, _ = plain(message.NewMessage("c", nil)) }()
	if got := <-h.started; got != "c" {
		t.Fatalf("started %s, want c (not limited by the route)", got)
	}
	if n, _ := l.InFlight(); n != 2 {
		t.Errorf("InFlight = %d, want 2", n)
	}
	close(h.release)
	if got := <-h.started; got != "b" {
		t.Fatalf("started %s, want b once a finished", got)
	}
	eventually(t, "all done", func() bool { n, _ := l.InFlight(); return n == 0 })
	// A name without a route limit has only the global limit.
	if _, err := l.HandlerMiddleware("other")(h.handle)(message.NewMessage("d", nil)); err != nil {
		t.Fatal(err)
	}
}
