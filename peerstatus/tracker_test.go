package peerstatus

import (
	"context"
	"errors"
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
)

// cuttable wraps a Publisher; while cut, publishes are dropped silently (as if the
// process had died: no goodbye gets out).
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

func newGoChannel(t *testing.T) *gochannel.GoChannel {
	t.Helper()
	g := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 256}, watermill.NopLogger{})
	t.Cleanup(func() { g.Close() })
	return g
}

type running struct {
	*Tracker
	pub  *cuttable
	errc chan error
}

// start runs a tracker on g; it is closed at the end of the test.
func start(t *testing.T, g *gochannel.GoChannel, cfg Config) *running {
	t.Helper()
	pub := &cuttable{Publisher: g}
	cfg.Publisher, cfg.Subscriber = pub, g
	if cfg.Service == "" {
		cfg.Service = "svc"
	}
	if cfg.Interval == 0 {
		cfg.Interval = 50 * time.Millisecond
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{Tracker: tr, pub: pub, errc: make(chan error, 1)}
	go func() { r.errc <- tr.Run(context.Background()) }()
	t.Cleanup(func() {
		tr.Close()
		if err := <-r.errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-tr.Started():
	case err := <-r.errc:
		t.Fatalf("Run: %v", err)
	}
	return r
}

// eventually fails the test when cond does not hold within 10 s (generous: noisy machine).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ids(ps []Peer) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.ID+"/"+p.State.String())
	}
	return strings.Join(s, ",")
}

func TestTrackersSeeEachOther(t *testing.T) {
	g := newGoChannel(t)
	reg := prometheus.NewRegistry()
	// A slower beat than the other tests: b stays Suspect from 2 to 4 missed beats, a
	// window (1 s) that polling catches even on a loaded machine under -race.
	const beat = 500 * time.Millisecond
	a := start(t, g, Config{InstanceID: "a", Registerer: reg, Interval: beat})
	b := start(t, g, Config{InstanceID: "b", Interval: beat})
	c := start(t, g, Config{InstanceID: "c", Interval: beat})

	for _, tr := range []*running{a, b, c} {
		eventually(t, tr.ID()+" knows 3 peers", func() bool { return len(tr.Peers()) == 3 })
	}
	peers := a.Peers()
	if ids(peers) != "a/alive,b/alive,c/alive" || !peers[0].Self || peers[1].Self {
		t.Fatalf("peers of a: %s", ids(peers))
	}
	eventually(t, "knownPeers 3 in b's heartbeats, as seen by a", func() bool {
		for _, p := range a.Peers() {
			if p.ID == "b" && p.KnownPeers == 3 {
				return true
			}
		}
		return false
	})
	if got := testutil.ToFloat64(a.metrics.peers.WithLabelValues("svc", "alive")); got != 3 {
		t.Errorf("peers gauge = %v", got)
	}

	// c leaves cleanly: its goodbye removes it at once (well before it would be suspected).
	c.Close()
	eventually(t, "a forgets c", func() bool { return len(a.Peers()) == 2 })

	// b dies: nothing more gets out; a suspects it, then drops it.
	b.pub.cut.Store(true)
	eventually(t, "a suspects b", func() bool {
		p := a.Peers()
		return len(p) == 2 && p[1].State == Suspect
	})
	if got := testutil.ToFloat64(a.metrics.peers.WithLabelValues("svc", "suspect")); got != 1 {
		t.Errorf("suspect gauge = %v", got)
	}
	eventually(t, "a drops b", func() bool { return len(a.Peers()) == 1 })
}

func TestOnChangeAndChanges(t *testing.T) {
	g := newGoChannel(t)
	var mu sync.Mutex
	var log []string
	a := start(t, g, Config{InstanceID: "a", OnChange: func(c Change) {
		mu.Lock()
		defer mu.Unlock()
		log = append(log, c.Kind.String()+":"+c.Peer.ID+":"+c.Peer.State.String())
	}})
	b := start(t, g, Config{InstanceID: "b"})
	eventually(t, "Changes shows b", func() bool {
		select {
		case snap := <-a.Changes():
			return ids(snap) == "a/alive,b/alive"
		default:
			return false
		}
	})
	b.pub.cut.Store(true)
	eventually(t, "b left", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(log) > 0 && log[len(log)-1] == "left:b:gone"
	})
	mu.Lock()
	got := strings.Join(log, " ")
	mu.Unlock()
	if !strings.HasPrefix(got, "joined:a:alive joined:b:alive") || !strings.Contains(got, "updated:b:suspect") {
		t.Errorf("changes: %s", got)
	}
}

func TestLeadershipInHeartbeats(t *testing.T) {
	g := newGoChannel(t)
	a := start(t, g, Config{InstanceID: "a"})
	b := start(t, g, Config{InstanceID: "b"})
	var seen atomic.Value
	stop := b.Observe(func(p Peer) {
		if p.ID == "a" {
			seen.Store(p)
		}
	})
	defer stop()
	a.SetLeadership(Leadership{IsLeader: true, LeaderID: "a", Term: 7})
	a.Announce()
	eventually(t, "b sees a lead in term 7", func() bool {
		p, _ := seen.Load().(Peer)
		return p.IsLeader && p.LeaderID == "a" && p.Term == 7
	})
	// Without an elector, b's heartbeats carry the leader it learned.
	eventually(t, "b reports leader a", func() bool {
		for _, p := range a.Peers() {
			if p.ID == "b" {
				return p.LeaderID == "a" && !p.IsLeader && p.Term == 7
			}
		}
		return false
	})
}

func TestStatus(t *testing.T) {
	g := newGoChannel(t)
	for _, id := range []string{"a", "b", "c"} {
		start(t, g, Config{Service: "other", InstanceID: id, Interval: time.Hour})
	}
	asker := start(t, g, Config{Service: "asker", StatusWait: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	var st Status
	var err error
	// The three may not know each other yet (heartbeat every hour; they learn from the
	// answers to each other's start-up asks): ask until all answer with knownPeers 3.
	eventually(t, "status lists 3 members", func() bool {
		st, err = asker.Status(ctx, "other")
		return err == nil && len(st.Members) == 3
	})
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("Status waited %v: it should return once the expected members answered", took)
	}
	if st.Service != "other" || st.LeaderID != "" {
		t.Errorf("status = %+v", st)
	}

	short := start(t, g, Config{Service: "asker2", StatusWait: 100 * time.Millisecond})
	if _, err := short.Status(ctx, "nobody"); !errors.Is(err, ErrNoPeers) {
		t.Errorf("Status(nobody) = %v, want ErrNoPeers", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := short.Status(cctx, "nobody"); !errors.Is(err, context.Canceled) {
		t.Errorf("Status with cancelled ctx = %v", err)
	}
	if _, err := short.Status(ctx, "bad.*"); err == nil {
		t.Error("Status accepted a wildcard service")
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{Service: "a#", Interval: -1, SuspectAfter: 5, GoneAfter: 3}.Validate()
	for _, want := range []string{"wildcard", "Publisher", "Subscriber", "Interval", "GoneAfter"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a problem about %s", err, want)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
	g := newGoChannel(t)
	if err := (Config{Service: "s", Publisher: g, Subscriber: g, SuspectAfter: 4}).Validate(); err == nil {
		t.Error("SuspectAfter 4 with the default GoneAfter 4 accepted")
	}
	if err := (Config{Service: "s", Publisher: g, Subscriber: g}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestLifecycle(t *testing.T) {
	g := newGoChannel(t)
	tr, err := New(Config{Service: "s", Publisher: g, Subscriber: g})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v", err)
	}

	r := start(t, g, Config{})
	if err := r.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v", err)
	}
	// ctx cancellation stops Run with nil.
	tr2, _ := New(Config{Service: "s", Publisher: g, Subscriber: g})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- tr2.Run(ctx) }()
	<-tr2.Started()
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Two trackers on one registry share the collectors.
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := New(Config{Service: "s", Publisher: g, Subscriber: g, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSubscriptionClosedIsAnError(t *testing.T) {
	g := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	tr, _ := New(Config{Service: "s", Publisher: g, Subscriber: g, Interval: time.Hour})
	errc := make(chan error, 1)
	go func() { errc <- tr.Run(context.Background()) }()
	<-tr.Started()
	g.Close()
	if err := <-errc; !errors.Is(err, ErrSubscriptionClosed) {
		t.Fatalf("Run = %v", err)
	}
}
