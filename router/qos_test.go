package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

// eventually polls cond every 20 ms until it holds or 30 s passed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gauge returns the value of the metric name (summed over its series) in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, m := range mf.GetMetric() {
			v += m.GetGauge().GetValue()
		}
		return v, true
	}
	return 0, false
}

// peerLoad returns the QoS load instance id advertises, as seen by s.
func peerLoad(s *router.Service, id string) (router.QoSLoad, bool) {
	for _, p := range s.Peers() {
		if p.ID == id && p.Load != nil {
			var l router.QoSLoad
			if json.Unmarshal(p.Load, &l) == nil {
				return l, true
			}
		}
	}
	return router.QoSLoad{}, false
}

// TestQoSOnByDefault: a Service has a limiter without any configuration; it counts the
// RPC handler that runs (in-flight gauge), another instance sees it in the load of the
// heartbeats (Peers), and another service in its Status.
func TestQoSOnByDefault(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-qos")
	cleanupQueues(t, url, name, "block")
	reg := prometheus.NewRegistry()
	a := newService(t, url, name, router.Config{Registerer: reg, Heartbeat: 200 * time.Millisecond})
	b := newService(t, url, name, router.Config{Heartbeat: 200 * time.Millisecond})
	if a.QoS() == nil || b.QoS() == nil {
		t.Fatal("QoS() is nil with the zero Config")
	}
	started, release := make(chan struct{}), make(chan struct{})
	if err := a.Handle("block", func(ctx context.Context, req *rpc.Request) (any, error) {
		close(started)
		<-release
		return "done", nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if lim := a.QoS().Limit(); lim <= 0 {
		t.Errorf("limit %d", lim)
	}
	if v, ok := gauge(t, reg, "micromessaging_qos_in_flight"); !ok || v != 0 {
		t.Errorf("in_flight gauge before the call: %v (registered: %v)", v, ok)
	}
	replied := make(chan error, 1)
	go func() {
		r, err := b.Request(ctx, name, "block", nil)
		if err == nil && string(r.Body) != `"done"` {
			err = errors.New("reply " + string(r.Body))
		}
		replied <- err
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("handler not started")
	}
	if n, _ := a.QoS().InFlight(); n != 1 {
		t.Errorf("InFlight = %d while the handler runs", n)
	}
	if v, _ := gauge(t, reg, "micromessaging_qos_in_flight"); v != 1 {
		t.Errorf("in_flight gauge %v while the handler runs", v)
	}
	eventually(t, "b to see a's load with 1 message in flight", func() bool {
		l, ok := peerLoad(b, a.ID())
		return ok && l.InFlight == 1 && l.State == "normal" && l.Limit > 0
	})
	// Another service reads it with Status.
	other := newService(t, url, testbroker.Name("router-qos-other"), router.Config{DisableQoS: true})
	if err := other.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := other.Status(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, m := range st.Members {
		var l router.QoSLoad
		if m.ID == a.ID() && json.Unmarshal(m.Load, &l) == nil {
			seen = l.InFlight == 1 && l.State == "normal"
		}
	}
	if !seen {
		t.Errorf("Status of %s from another service lacks a's load: %+v", name, st.Members)
	}
	close(release)
	if err := <-replied; err != nil {
		t.Fatal(err)
	}
	eventually(t, "in flight back to 0", func() bool { n, _ := a.QoS().InFlight(); return n == 0 })
	eventually(t, "b to see a's load back to 0", func() bool {
		l, ok := peerLoad(b, a.ID())
		return ok && l.InFlight == 0
	})
}

// memSignals reports the memory in use the test sets; every other signal is quiet.
type memSignals struct{ used atomic.Int64 }

func (m *memSignals) Sample() qos.Signals {
	return qos.Signals{MemoryUsed: m.used.Load(), GOMAXPROCS: 2}
}

// TestQoSStopPausesIntake: over the hard memory limit the Service stops consuming its
// requests (the request waits in its queue, no consumer) and serves it once memory is
// back; the hooks of Config.QoS fire.
func TestQoSStopPausesIntake(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-qos-stop")
	cleanupQueues(t, url, name, "echo")
	const mib = 1 << 20
	sig := &memSignals{}
	sig.used.Store(10 * mib)
	pressure, release := make(chan qos.Transition, 10), make(chan qos.Transition, 10)
	server := newService(t, url, name, router.Config{QoS: qos.Config{
		MemorySoftLimit: 50 * mib, MemoryHardLimit: 100 * mib, Signals: sig,
		SampleInterval: 50 * time.Millisecond,
		OnPressure:     func(tr qos.Transition) { pressure <- tr },
		OnRelease:      func(tr qos.Transition) { release <- tr },
	}})
	if err := server.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	client := newService(t, url, testbroker.Name("router-qos-client"), router.Config{DisableQoS: true})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := server.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	ch := rawChannel(t, url)
	queue := func() amqp.Queue {
		q, err := ch.QueueDeclarePassive(wire.RequestQueue(name, "echo"), true, false, false, false, wire.RequestQueueArgs())
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	if q := queue(); q.Consumers != 1 {
		t.Fatalf("%d consumers before the stop", q.Consumers)
	}

	sig.used.Store(200 * mib) // over the hard limit
	select {
	case tr := <-pressure:
		if tr.To != qos.Stopped || !tr.Reasons.Has(qos.ReasonMemoryHard) {
			t.Errorf("pressure hook: %+v", tr)
		}
	case <-ctx.Done():
		t.Fatal("no pressure hook")
	}
	if s := server.QoS().State(); s != qos.Stopped {
		t.Errorf("state %v", s)
	}
	eventually(t, "the request consumer to be cancelled", func() bool { return queue().Consumers == 0 })
	replied := make(chan error, 1)
	go func() {
		_, err := client.Request(ctx, name, "echo", "hi", rpc.WithTimeout(80*time.Second))
		replied <- err
	}()
	eventually(t, "the request to wait in its queue", func() bool { return queue().Messages == 1 })
	select {
	case err := <-replied:
		t.Fatalf("served while stopped: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	sig.used.Store(10 * mib) // back under the soft limit
	select {
	case tr := <-release:
		if tr.From != qos.Stopped || tr.To != qos.Normal {
			t.Errorf("release hook: %+v", tr)
		}
	case <-ctx.Done():
		t.Fatal("no release hook")
	}
	if err := <-replied; err != nil {
		t.Fatalf("request after the release: %v", err)
	}
}

// TestQoSDisabled: DisableQoS leaves no limiter, no QoS metrics and no load.
func TestQoSDisabled(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-noqos")
	cleanupQueues(t, url, name, "echo")
	reg := prometheus.NewRegistry()
	s := newService(t, url, name, router.Config{Registerer: reg, DisableQoS: true,
		QoS: qos.Config{MaxInFlight: -5}}) // ignored when disabled
	if s.QoS() != nil {
		t.Fatal("QoS() is not nil with DisableQoS")
	}
	if err := s.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Request(ctx, name, "echo", "hi"); err != nil || string(r.Body) != `"hi"` {
		t.Fatalf("%v %v", r, err)
	}
	if _, ok := gauge(t, reg, "micromessaging_qos_limit"); ok {
		t.Error("QoS metrics registered with DisableQoS")
	}
	for _, p := range s.Peers() {
		if p.Load != nil {
			t.Errorf("load %s with DisableQoS", p.Load)
		}
	}
	if _, err := router.New(name, router.Config{QoS: qos.Config{MaxInFlight: -5}}); err == nil ||
		!strings.Contains(err.Error(), "MaxInFlight") {
		t.Errorf("invalid QoS config accepted: %v", err)
	}
}

// TestQoSRouteLimit: Config.QoS.Routes is keyed by route name and applies to the RPC and
// task routes of that name; task and event handlers are limited too.
func TestQoSRouteLimit(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-qos-route")
	cleanupQueues(t, url, name, "one")
	t.Cleanup(func() { deleteTaskQueues(t, url, name, "job") })
	s := newService(t, url, name, router.Config{QoS: qos.Config{
		Routes: map[string]qos.RouteLimit{"one": {MaxInFlight: 1}, "job": {MaxInFlight: 1}},
	}})
	var running, peak atomic.Int32
	gate := make(chan struct{})
	enter := func() {
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-gate
		running.Add(-1)
	}
	if err := s.Handle("one", func(ctx context.Context, req *rpc.Request) (any, error) { enter(); return "ok", nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.HandleTask("job", func(*message.Message) error { enter(); return nil }); err != nil {
		t.Fatal(err)
	}
	evt := make(chan struct{})
	if _, err := s.Listen(name, "evt", func(*message.Message) error { evt <- struct{}{}; <-gate; return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	replies := make(chan error, 2)
	for range 2 {
		go func() { _, err := s.Request(ctx, name, "one", nil); replies <- err }()
	}
	for range 2 {
		if err := s.Task(ctx, name, "job", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "one request and one task in their handlers", func() bool { return running.Load() == 2 })
	time.Sleep(500 * time.Millisecond) // the second of each would have started by now
	if p := peak.Load(); p != 2 {
		t.Errorf("%d handlers ran at once, want 2 (one per limited route)", p)
	}
	if n, _ := s.QoS().InFlight(); n != 2 {
		t.Errorf("InFlight = %d, want 2", n)
	}
	if err := s.Emit(ctx, name, "evt", nil, nil); err != nil {
		t.Fatal(err)
	}
	<-evt
	if n, _ := s.QoS().InFlight(); n != 3 {
		t.Errorf("InFlight = %d with an event handler running, want 3", n)
	}
	close(gate)
	for range 2 {
		if err := <-replies; err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every handler to finish", func() bool { n, _ := s.QoS().InFlight(); return n == 0 && running.Load() == 0 })
}

// deleteTaskQueues deletes the request, first retry and dead queues of a task route.
func deleteTaskQueues(t *testing.T, url, service, route string) {
	for _, q := range []string{wire.RequestQueue(service, route), tasks.RetryQueue(service, route, 1), tasks.DeadQueue(service, route)} {
		if _, err := rawChannel(t, url).QueueDelete(q, false, false, false); err != nil {
			t.Logf("delete %s: %v", q, err)
		}
	}
}

// TestQoSCloseWhileStopped: a Service closes promptly while its intake is stopped, and
// the request that waited is not lost: it stays in its queue or, when the limiter's
// end (which resumes the subscriber it paused) lets it in before the limiter closes,
// it is served.
func TestQoSCloseWhileStopped(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-qos-close")
	cleanupQueues(t, url, name, "echo")
	const mib = 1 << 20
	sig := &memSignals{}
	sig.used.Store(200 * mib) // stopped from the first sample
	server, err := router.New(name, router.Config{URL: url, QoS: qos.Config{
		MemorySoftLimit: 50 * mib, MemoryHardLimit: 100 * mib, Signals: sig, SampleInterval: 50 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	var served atomic.Int32
	if err := server.Handle("echo", func(ctx context.Context, req *rpc.Request) (any, error) {
		served.Add(1)
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := server.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "intake to stop", func() bool { return server.QoS().State() == qos.Stopped })
	ch := rawChannel(t, url)
	q := wire.RequestQueue(name, "echo")
	pub := rawChannel(t, url)
	if err := pub.PublishWithContext(ctx, "", q, true, false, amqp.Publishing{Body: []byte(`"hi"`)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the request to wait in its queue", func() bool {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, wire.RequestQueueArgs())
		if err != nil {
			t.Fatal(err)
		}
		return st.Messages == 1 && st.Consumers == 0
	})
	start := time.Now()
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Close took %v", d)
	}
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, wire.RequestQueueArgs())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after Close: %d messages, %d served", st.Messages, served.Load())
	if st.Messages+int(served.Load()) != 1 || st.Consumers != 0 {
		t.Errorf("after Close: %d messages, %d consumers, %d served", st.Messages, st.Consumers, served.Load())
	}
}
