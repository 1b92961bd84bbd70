package election

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/micromessaging/micromessaging/peerstatus"
)

// cuttable drops every publish while cut (a dead process sends nothing).
type cuttable struct {
	message.Publisher
	cut atomic.Bool
}

func (c *cuttable) Publish(topic string, msgs ...*message.Message) error {
	if c.cut.Load() {
		return nil
	}
	return c.Publisher.Publish(topic, msgs...)
}

// terms checks that no two instances ever lead in the same term.
type terms struct {
	t  *testing.T
	mu sync.Mutex
	by map[uint64]string
}

func newTerms(t *testing.T) *terms { return &terms{t: t, by: map[uint64]string{}} }

func (r *terms) record(id string, term uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, ok := r.by[term]; ok && other != id {
		r.t.Errorf("term %d led by both %s and %s", term, other, id)
	}
	r.by[term] = id
}

type inst struct {
	tr     *peerstatus.Tracker
	el     *Elector
	conn   *memConn
	pub    *cuttable
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu     sync.Mutex
	events []string
	upCtx  []context.Context
}

func startInst(t *testing.T, g *gochannel.GoChannel, b *memBroker, rec *terms, id string, mod func(*Config)) *inst {
	t.Helper()
	i := &inst{conn: b.conn(), pub: &cuttable{Publisher: g}}
	tr, err := peerstatus.New(peerstatus.Config{Service: "svc", InstanceID: id, Publisher: i.pub, Subscriber: g, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Tracker: tr, Locker: i.conn, RetryInterval: 20 * time.Millisecond,
		OnStepUp: func(u StepUp) {
			if rec != nil {
				rec.record(id, u.Term)
			}
			i.mu.Lock()
			i.events = append(i.events, fmt.Sprintf("up:%d", u.Term))
			i.upCtx = append(i.upCtx, u.Context)
			i.mu.Unlock()
		},
		OnStepDown: func(d StepDown) {
			i.mu.Lock()
			i.events = append(i.events, fmt.Sprintf("down:%d:%s", d.Term, d.Reason))
			i.mu.Unlock()
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	el, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	i.tr, i.el = tr, el
	ctx, cancel := context.WithCancel(context.Background())
	i.cancel = cancel
	i.wg.Add(2)
	go func() {
		defer i.wg.Done()
		if err := tr.Run(ctx); err != nil {
			t.Errorf("tracker %s: %v", id, err)
		}
	}()
	go func() {
		defer i.wg.Done()
		if err := el.Run(ctx); err != nil {
			t.Errorf("elector %s: %v", id, err)
		}
	}()
	t.Cleanup(i.stop)
	return i
}

// stop shuts the instance down cleanly: elector first (it announces its step-down),
// then the tracker (goodbye heartbeat).
func (i *inst) stop() {
	i.once.Do(func() {
		i.el.Close()
		i.tr.Close()
		i.cancel()
		i.wg.Wait()
	})
}

// kill makes the instance die as a process would: nothing more goes out and its
// connection (so its lock) is gone.
func (i *inst) kill() {
	i.pub.cut.Store(true)
	i.conn.kill()
}

func (i *inst) log() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return strings.Join(i.events, " ")
}

// ownSub is a Subscriber of its own on a shared GoChannel: Close ends its own
// subscriptions, like a real Subscriber's Close, without closing the GoChannel.
type ownSub struct {
	message.Subscriber
	mu      sync.Mutex
	cancels []context.CancelFunc
}

func (s *ownSub) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.cancels = append(s.cancels, cancel)
	s.mu.Unlock()
	return s.Subscriber.Subscribe(ctx, topic)
}

func (s *ownSub) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cancels {
		c()
	}
	return nil
}

func newGoChannel(t *testing.T) *gochannel.GoChannel {
	g := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 256}, watermill.NopLogger{})
	t.Cleanup(func() { g.Close() })
	return g
}

// agreement returns the leader when exactly one of insts leads and all know it.
func agreement(insts []*inst) (string, bool) {
	leader := ""
	for _, i := range insts {
		if i.el.IsLeader() {
			if leader != "" {
				return "", false
			}
			leader = i.el.ID()
		}
	}
	if leader == "" {
		return "", false
	}
	for _, i := range insts {
		if i.el.Leader() != leader {
			return "", false
		}
	}
	return leader, true
}

func waitAgreement(t *testing.T, what string, insts []*inst) *inst {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if id, ok := agreement(insts); ok {
			for _, i := range insts {
				if i.el.ID() == id {
					return i
				}
			}
		}
		if time.Now().After(deadline) {
			var s []string
			for _, i := range insts {
				s = append(s, fmt.Sprintf("%s: leader=%v knows=%q term=%d", i.el.ID(), i.el.IsLeader(), i.el.Leader(), i.el.Term()))
			}
			t.Fatalf("no agreement (%s):\n%s", what, strings.Join(s, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLoneInstanceLeads(t *testing.T) {
	g := newGoChannel(t)
	reg := prometheus.NewRegistry()
	a := startInst(t, g, newMemBroker(), newTerms(t), "a", func(c *Config) { c.Registerer = reg })
	waitAgreement(t, "alone", []*inst{a})
	st := a.el.State()
	if !st.IsLeader || st.LeaderID != "a" || st.Term == 0 {
		t.Fatalf("state = %+v", st)
	}
	select {
	case got := <-a.el.Changes():
		if got != st {
			t.Errorf("Changes = %+v, want %+v", got, st)
		}
	default:
		t.Error("Changes holds nothing")
	}
	ctx, term, err := a.el.Leading()
	if err != nil || term != st.Term || ctx.Err() != nil {
		t.Fatalf("Leading = %v %d %v", ctx, term, err)
	}
	// The own heartbeat says isMaster with the term.
	eventually(t, "the tracker reports the leadership", func() bool {
		for _, p := range a.tr.Peers() {
			if p.Self {
				return p.IsLeader && p.LeaderID == "a" && p.Term == st.Term
			}
		}
		return false
	})
	if v := testutil.ToFloat64(a.el.metrics.isLeader.WithLabelValues("svc")); v != 1 {
		t.Errorf("is_leader = %v", v)
	}
	if v := testutil.ToFloat64(a.el.metrics.term.WithLabelValues("svc")); v != float64(st.Term) {
		t.Errorf("term gauge = %v", v)
	}
	if v := testutil.ToFloat64(a.el.metrics.changes.WithLabelValues("svc")); v != 1 {
		t.Errorf("leader_changes = %v", v)
	}
	a.stop()
	if ctx.Err() == nil {
		t.Error("leadership context not cancelled after Close")
	}
	if got, want := a.log(), fmt.Sprintf("up:%d down:%d:stopped", st.Term, st.Term); got != want {
		t.Errorf("hooks: %q, want %q", got, want)
	}
	if a.el.IsLeader() {
		t.Error("still leader after Close")
	}
	if v := testutil.ToFloat64(a.el.metrics.isLeader.WithLabelValues("svc")); v != 0 {
		t.Errorf("is_leader after Close = %v", v)
	}
}

func TestGroupFailsOverWhenTheLeaderDies(t *testing.T) {
	g := newGoChannel(t)
	b := newMemBroker()
	rec := newTerms(t)
	var group []*inst
	for _, id := range []string{"a", "b", "c", "d"} {
		group = append(group, startInst(t, g, b, rec, id, nil))
	}
	prevTerm := uint64(0)
	for round := range 3 {
		leader := waitAgreement(t, fmt.Sprintf("round %d", round), group)
		term := leader.el.Term()
		if term <= prevTerm {
			t.Fatalf("round %d: term %d not greater than %d", round, term, prevTerm)
		}
		for _, i := range group {
			if i.el.Term() != term {
				t.Errorf("%s knows term %d, leader's is %d", i.el.ID(), i.el.Term(), term)
			}
		}
		prevTerm = term
		leader.kill()
		if leader.el.IsLeader() {
			// The lost lock is noticed at once.
			eventually(t, "the dead leader steps down", func() bool { return !leader.el.IsLeader() })
		}
		var rest []*inst
		for _, i := range group {
			if i != leader {
				rest = append(rest, i)
			}
		}
		group = rest
		if !strings.Contains(leader.log(), "lock_lost") {
			eventually(t, "step-down hook", func() bool { return strings.Contains(leader.log(), "lock_lost") })
		}
	}
	last := waitAgreement(t, "last one", group)
	if last.el.Term() <= prevTerm {
		t.Fatalf("term did not grow: %d", last.el.Term())
	}
}

func TestCleanStepDownHandsOverAtOnce(t *testing.T) {
	g := newGoChannel(t)
	b := newMemBroker()
	rec := newTerms(t)
	slow := func(c *Config) { c.RetryInterval = time.Hour } // only the announcement can wake them
	group := []*inst{startInst(t, g, b, rec, "a", nil)}
	waitAgreement(t, "a alone", group)
	group = append(group, startInst(t, g, b, rec, "b", slow), startInst(t, g, b, rec, "c", slow))
	leader := waitAgreement(t, "late joiners see the leader", group)
	if leader.el.ID() != "a" {
		t.Fatalf("leader = %s", leader.el.ID())
	}
	leader.mu.Lock()
	upCtx := leader.upCtx[0]
	leader.mu.Unlock()
	leader.stop()
	if upCtx.Err() == nil {
		t.Error("StepUp.Context not cancelled")
	}
	if !strings.HasSuffix(leader.log(), ":stopped") {
		t.Errorf("hooks: %s", leader.log())
	}
	// b and c retry only every hour: they take over because a announced its step-down.
	waitAgreement(t, "after a stepped down", group[1:])
}

func TestSupersededLeaderStepsDown(t *testing.T) {
	g := newGoChannel(t)
	a := startInst(t, g, newMemBroker(), nil, "a", nil)
	waitAgreement(t, "alone", []*inst{a})
	term := a.el.Term()
	// A Go rival claims leadership in a higher term: a must have lost the lock.
	fake := fmt.Sprintf(`{"id":"rival","name":"svc","isReady":true,"isMaster":true,"elapsedMs":1,"startedAt":"2026-01-01T00:00:00.000Z","leaderId":"rival","memoryUsage":{},"knownPeers":2,"type":"%s","version":1,"intervalMs":60000,"term":%d}`,
		peerstatus.BodyType, term+5)
	if err := g.Publish(peerstatus.AliveTopic("svc"), message.NewMessage(watermill.NewUUID(), []byte(fake))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "superseded step-down", func() bool { return strings.Contains(a.log(), fmt.Sprintf("down:%d:superseded", term)) })
	// The in-memory lock was free (the rival was fake): a leads again, in a newer term.
	eventually(t, "a leads again", func() bool { return a.el.IsLeader() && a.el.Term() > term+5 })
}

func TestFollowsANodeLeader(t *testing.T) {
	g := newGoChannel(t)
	b := newMemBroker()
	// A Node instance holds the lock and heartbeats without a term.
	node := b.conn()
	if _, _, err := node.TryLock(context.Background(), "internal.svc.lock"); err != nil {
		t.Fatal(err)
	}
	a := startInst(t, g, b, nil, "a", nil)
	beat := func(master bool) {
		body := fmt.Sprintf(`{"id":"node","name":"svc","isReady":true,"isMaster":%v,"elapsedMs":1,"startedAt":"2026-01-01T00:00:00.000Z","leaderId":"node","memoryUsage":{},"knownPeers":2}`, master)
		if err := g.Publish(peerstatus.AliveTopic("svc"), message.NewMessage(watermill.NewUUID(), []byte(body))); err != nil {
			t.Fatal(err)
		}
	}
	<-a.tr.Started()
	eventually(t, "a follows node", func() bool { beat(true); return a.el.Leader() == "node" })
	if a.el.IsLeader() || a.el.Term() != 0 {
		t.Fatalf("state = %+v", a.el.State())
	}
	// The Node leader dies: the lock is free, a takes over.
	node.kill()
	eventually(t, "a leads", func() bool { return a.el.IsLeader() && a.el.Leader() == "a" })
}

func TestLeaderOnlyHandlers(t *testing.T) {
	g := newGoChannel(t)
	b := newMemBroker()
	type got struct {
		id   string
		term uint64
	}
	seen := make(chan got, 100)
	var group []*inst
	for _, id := range []string{"a", "b"} {
		in := startInst(t, g, b, nil, id, nil)
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		// Watermill closes a router whose handlers all stopped: keep one that always runs.
		// The router closes its handlers' subscribers when it closes: not the shared one.
		sub := &ownSub{Subscriber: g}
		router.AddConsumerHandler("keepalive", "keepalive."+id, sub, func(*message.Message) error { return nil })
		in.el.AddConsumerHandler(router, "jobs", "jobs", sub, func(msg *message.Message) error {
			term, ok := TermFromContext(msg.Context())
			if !ok {
				t.Error("no term in the handler's context")
			}
			seen <- got{id, term}
			return nil
		})
		rctx, rcancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); router.Run(rctx) }()
		t.Cleanup(func() { rcancel(); router.Close(); <-done })
		group = append(group, in)
	}
	leader := waitAgreement(t, "two", group)
	// Publish until the leader's handler has subscribed and got one; only it may.
	send := func() {
		if err := g.Publish("jobs", message.NewMessage(watermill.NewUUID(), []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(id string, term uint64) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			send()
			select {
			case m := <-seen:
				if m.id != id || m.term != term {
					t.Fatalf("handled by %s in term %d, want %s in %d", m.id, m.term, id, term)
				}
				// Drain what the others may still be handling: all must be the leader's.
				for {
					select {
					case m := <-seen:
						if m.id != id {
							t.Fatalf("handled by follower %s", m.id)
						}
					case <-time.After(100 * time.Millisecond):
						return
					}
				}
			case <-time.After(20 * time.Millisecond):
			case <-deadline:
				t.Fatalf("leader %s never handled a job", id)
			}
		}
	}
	expect(leader.el.ID(), leader.el.Term())
	leader.stop()
	var next *inst
	for _, i := range group {
		if i != leader {
			next = i
		}
	}
	waitAgreement(t, "after handover", []*inst{next})
	expect(next.el.ID(), next.el.Term())
}

func TestMiddleware(t *testing.T) {
	g := newGoChannel(t)
	b := newMemBroker()
	holder := b.conn()
	_, release, _ := holder.TryLock(context.Background(), "internal.svc.lock")
	a := startInst(t, g, b, nil, "a", nil)
	h := a.el.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		if _, ok := TermFromContext(msg.Context()); !ok {
			t.Error("no term")
		}
		return nil, nil
	})
	if _, err := h(message.NewMessage("1", nil)); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower: %v", err)
	}
	if _, _, err := a.el.Leading(); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Leading: %v", err)
	}
	release(context.Background())
	eventually(t, "a leads", a.el.IsLeader)
	if _, err := h(message.NewMessage("2", nil)); err != nil {
		t.Fatal(err)
	}
}

func TestConfigAndLifecycle(t *testing.T) {
	err := Config{RetryInterval: -1, AskInterval: -1}.Validate()
	for _, want := range []string{"Tracker", "Locker", "RetryInterval", "AskInterval"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want a problem about %s", err, want)
		}
	}
	g := newGoChannel(t)
	tr, _ := peerstatus.New(peerstatus.Config{Service: "svc", Publisher: g, Subscriber: g})
	el, err := New(Config{Tracker: tr, Locker: newMemBroker().conn()})
	if err != nil {
		t.Fatal(err)
	}
	if el.IsLeader() || el.Leader() != "" || el.ID() != tr.ID() {
		t.Fatal("fresh elector claims something")
	}
	el.Close()
	el.Close()
	if err := el.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v", err)
	}
	a := startInst(t, g, newMemBroker(), nil, "a", nil)
	eventually(t, "a leads", a.el.IsLeader) // its Run is running
	if err := a.el.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v", err)
	}
	if !IsLockHeld(ErrLockHeld) || !IsLockHeld(fmt.Errorf("x: %w", ErrLockHeld)) || IsLockHeld(errors.New("x")) || IsLockHeld(nil) {
		t.Error("IsLockHeld")
	}
	// Two electors on one registry share the collectors.
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := New(Config{Tracker: tr, Locker: newMemBroker().conn(), Registerer: reg}); err != nil {
			t.Fatal(err)
		}
	}
}

// releaseWatch wraps a Locker and records, at every release, whether the Elector still
// reported leadership.
type releaseWatch struct {
	Locker
	el        atomic.Pointer[Elector]
	mu        sync.Mutex
	atRelease []bool
}

func (w *releaseWatch) TryLock(ctx context.Context, name string) (<-chan struct{}, func(context.Context) error, error) {
	lost, release, err := w.Locker.TryLock(ctx, name)
	if err != nil {
		return lost, release, err
	}
	return lost, func(ctx context.Context) error {
		w.mu.Lock()
		w.atRelease = append(w.atRelease, w.el.Load().IsLeader())
		w.mu.Unlock()
		return release(ctx)
	}, nil
}

// A stopping leader stops reporting leadership before it gives the lock up: otherwise
// another instance could take the lock while this one still says it leads.
func TestStopStepsDownBeforeReleasing(t *testing.T) {
	g := newGoChannel(t)
	w := &releaseWatch{}
	a := startInst(t, g, newMemBroker(), nil, "a", func(c *Config) { w.Locker = c.Locker; c.Locker = w })
	w.el.Store(a.el)
	waitAgreement(t, "alone", []*inst{a})
	a.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.atRelease) == 0 {
		t.Fatal("the lock was not released")
	}
	for k, leading := range w.atRelease {
		if leading {
			t.Errorf("release %d: IsLeader still true when the lock was released", k)
		}
	}
}

// A leader superseded by a higher term reports the new leader with the new leader's
// term, never with its own ended term.
func TestSupersededStateNamesTheRivalsTerm(t *testing.T) {
	g := newGoChannel(t)
	// Retrying hourly, a stays a follower after it steps down.
	a := startInst(t, g, newMemBroker(), nil, "a", func(c *Config) { c.RetryInterval = time.Hour })
	waitAgreement(t, "alone", []*inst{a})
	term := a.el.Term()
	fake := fmt.Sprintf(`{"id":"rival","name":"svc","isReady":true,"isMaster":true,"elapsedMs":1,"startedAt":"2026-01-01T00:00:00.000Z","leaderId":"rival","memoryUsage":{},"knownPeers":2,"type":"%s","version":1,"intervalMs":60000,"term":%d}`,
		peerstatus.BodyType, term+5)
	if err := g.Publish(peerstatus.AliveTopic("svc"), message.NewMessage(watermill.NewUUID(), []byte(fake))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "superseded step-down", func() bool { return strings.Contains(a.log(), "superseded") })
	want := State{LeaderID: "rival", Term: term + 5}
	if st := a.el.State(); st != want {
		t.Fatalf("state after the step-down = %+v, want %+v", st, want)
	}
}

// The message context of a leader-only handler (and of Middleware) ends with the
// leadership, so long work stops when another instance may already have taken over.
func TestLeaderOnlyContextEndsWithLeadership(t *testing.T) {
	g := newGoChannel(t)
	a := startInst(t, g, newMemBroker(), nil, "a", func(c *Config) { c.RetryInterval = time.Hour })
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	sub := detachedSub{&ownSub{Subscriber: g}}
	router.AddConsumerHandler("keepalive", "keepalive.a", sub, func(*message.Message) error { return nil })
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	a.el.AddConsumerHandler(router, "jobs", "jobs", sub, func(msg *message.Message) error {
		started <- struct{}{}
		select {
		case <-msg.Context().Done():
			ended <- msg.Context().Err()
		case <-time.After(15 * time.Second):
			ended <- errors.New("the context outlived the leadership")
		}
		return nil
	})
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); router.Run(rctx) }()
	t.Cleanup(func() { rcancel(); router.Close(); <-done })
	waitAgreement(t, "alone", []*inst{a})
	// Middleware gives a live context while leading, and the message its own back after.
	orig := context.WithValue(context.Background(), termKey{}, "orig")
	m := message.NewMessage("1", nil)
	m.SetContext(orig)
	mw := a.el.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		if msg.Context().Err() != nil {
			t.Error("Middleware: context already ended while leading")
		}
		return nil, nil
	})
	if _, err := mw(m); err != nil {
		t.Fatal(err)
	}
	if m.Context() != orig {
		t.Error("Middleware did not give the message its own context back")
	}
	deadline := time.After(15 * time.Second)
	for wait := true; wait; {
		if err := g.Publish("jobs", message.NewMessage(watermill.NewUUID(), []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
		select {
		case <-started:
			wait = false
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("the leader-only handler never ran")
		}
	}
	a.kill()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler context: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handler still running")
	}
	if a.el.IsLeader() {
		t.Fatal("still leads after its lock was lost")
	}
}

// detachedSub hands out messages whose context does not end with the subscription (as
// the rabbitmq transport does), so only the elector can cancel them.
type detachedSub struct{ *ownSub }

func (s detachedSub) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.ownSub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for m := range in {
			m.SetContext(context.Background())
			out <- m
		}
	}()
	return out, nil
}
