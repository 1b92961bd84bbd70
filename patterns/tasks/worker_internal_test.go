package tasks

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// recorder is a message.Publisher that keeps what it is given (unit tests only; the
// integration tests use the broker).
type recorder struct {
	mu   sync.Mutex
	sent []sent
	err  error
}

type sent struct {
	topic string
	msg   *message.Message
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	for _, m := range msgs {
		r.sent = append(r.sent, sent{topic, m})
	}
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) last(t *testing.T) sent {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sent) == 0 {
		t.Fatal("nothing published")
	}
	return r.sent[len(r.sent)-1]
}

type noChannels struct{}

func (noChannels) Channel(context.Context) (*amqp.Channel, error) {
	return nil, errors.New("no broker in unit tests")
}

func newTestWorker(t *testing.T, pub message.Publisher, reg prometheus.Registerer, mod func(*WorkerConfig)) *Worker {
	t.Helper()
	cfg := WorkerConfig{Service: "svc", Publisher: pub, Channels: noChannels{}, Registerer: reg, MaxAttempts: 3}
	if mod != nil {
		mod(&cfg)
	}
	w, err := NewWorker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.declared["work"] = true // queues "declared": unit tests have no broker
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	return w
}

// delivery looks like a task as the codec hands it over from the wire.
func delivery(attempt string) *message.Message {
	msg := message.NewMessage("uuid-1", []byte(`{"i":1}`))
	msg.Metadata = message.Metadata{
		wire.MetaMMSRoute: "work", wire.MetaMMSIsTask: "true", wire.MetaMMSIAT: "1700000000000",
		wire.HeaderIDRequest: "id-1", "user": "u",
		wire.MetaRoutingKey: "q.requests.svc.work", wire.MetaRedelivered: "false", wire.MetaContentType: wire.ContentType,
		"x-death": `[{"count":1}]`, "x-first-death-queue": "q.retry.svc.work.1",
	}
	if attempt != "" {
		msg.Metadata.Set(HeaderAttempt, attempt)
	}
	return msg
}

func TestWorkerConfigValidate(t *testing.T) {
	err := WorkerConfig{MaxAttempts: -1, Multiplier: 0.5, Jitter: 1, InitialBackoff: time.Second, MaxBackoff: time.Millisecond}.Validate()
	for _, want := range []string{"Service", "Publisher", "Channels", "MaxAttempts", "Multiplier", "Jitter", "MaxBackoff"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a complaint about %s", err, want)
		}
	}
	if err := (WorkerConfig{Service: "s", Publisher: &recorder{}, Channels: noChannels{}, MaxAttempts: MaxMaxAttempts + 1}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "MaxAttempts") {
		t.Errorf("MaxAttempts over MaxMaxAttempts: Validate() = %v", err)
	}
	nan := math.NaN()
	err = WorkerConfig{Service: "s", Publisher: &recorder{}, Channels: noChannels{}, MaxAttempts: 1, Multiplier: nan, Jitter: nan,
		InitialBackoff: time.Second, MaxBackoff: time.Second, MaxDuration: time.Second, CloseTimeout: time.Second}.Validate()
	for _, want := range []string{"Multiplier NaN", "Jitter NaN"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a complaint about %s", err, want)
		}
	}
	if _, err := NewWorker(WorkerConfig{Service: "s", Publisher: &recorder{}, Channels: noChannels{}}); err != nil {
		t.Errorf("defaults should validate: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	w := newTestWorker(t, &recorder{}, nil, func(c *WorkerConfig) {
		c.InitialBackoff, c.MaxBackoff, c.Multiplier = 100*time.Millisecond, time.Second, 3
	})
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 300 * time.Millisecond, 3: 900 * time.Millisecond, 4: time.Second, 400: time.Second} {
		if got := w.Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
	w.cfg.Jitter = 0.5
	for range 100 {
		if d := w.jittered(time.Second); d < 500*time.Millisecond || d > 1500*time.Millisecond {
			t.Fatalf("jittered(1s) = %v, want within ±50%%", d)
		}
	}
}

func TestAttempt(t *testing.T) {
	for v, want := range map[string]int{"": 1, "1": 1, "3": 3, "x": 1, "-2": 1} {
		msg := message.NewMessage("u", nil)
		if v != "" {
			msg.Metadata.Set(HeaderAttempt, v)
		}
		if got := Attempt(msg); got != want {
			t.Errorf("Attempt(%q) = %d, want %d", v, got, want)
		}
	}
}

func TestHandlerSuccess(t *testing.T) {
	pub := &recorder{}
	reg := prometheus.NewRegistry()
	w := newTestWorker(t, pub, reg, nil)
	var got *message.Message
	h := w.Handler("work", func(msg *message.Message) error {
		got = msg
		if _, ok := msg.Context().Deadline(); !ok {
			t.Error("handler ctx has no deadline (MaxDuration)")
		}
		return nil
	})
	if err := h(delivery("")); err != nil {
		t.Fatal(err)
	}
	if got == nil || string(got.Payload) != `{"i":1}` || got.Metadata.Get("user") != "u" {
		t.Fatalf("handler got %+v", got)
	}
	if len(pub.sent) != 0 {
		t.Fatalf("published %d messages on success", len(pub.sent))
	}
	if v := testutil.ToFloat64(w.metrics.handled.WithLabelValues("work", OutcomeSuccess)); v != 1 {
		t.Errorf("handled{success} = %v", v)
	}
	if n := testutil.CollectAndCount(reg, "micromessaging_tasks_handling_seconds"); n == 0 {
		t.Error("no handling_seconds series")
	}
}

func TestHandlerRetryThenDeadLetter(t *testing.T) {
	pub := &recorder{}
	w := newTestWorker(t, pub, prometheus.NewRegistry(), func(c *WorkerConfig) { c.InitialBackoff = 250 * time.Millisecond })
	h := w.Handler("work", func(*message.Message) error { return errors.New("db down") })

	// attempt 1 fails -> q.retry.svc.work.1, expiration 250, attempt 2
	if err := h(delivery("")); err != nil {
		t.Fatalf("a scheduled retry must ack: %v", err)
	}
	s := pub.last(t)
	if s.topic != "q.retry.svc.work.1" {
		t.Errorf("topic %q", s.topic)
	}
	md := s.msg.Metadata
	checks := map[string]string{
		HeaderAttempt: "2", wire.MetaExpiration: "250", wire.MetaPersistent: "true", HeaderError: "db down",
		wire.MetaMMSRoute: "work", wire.MetaMMSIsTask: "true", wire.MetaMMSIAT: "1700000000000",
		wire.HeaderIDRequest: "id-1", "user": "u",
	}
	for k, want := range checks {
		if md.Get(k) != want {
			t.Errorf("retry copy %s = %q, want %q", k, md.Get(k), want)
		}
	}
	for _, k := range []string{wire.MetaRoutingKey, wire.MetaRedelivered, wire.MetaContentType, "x-death", "x-first-death-queue"} {
		if _, ok := md[k]; ok {
			t.Errorf("retry copy keeps %s", k)
		}
	}
	if s.msg.UUID != "uuid-1" || string(s.msg.Payload) != `{"i":1}` {
		t.Errorf("retry copy %s %s", s.msg.UUID, s.msg.Payload)
	}
	// The copy must be encodable as it is.
	p, err := wire.Codec{}.Marshal(s.msg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Expiration != "250" || p.DeliveryMode != amqp.Persistent || p.Headers["__mms"].(amqp.Table)["isTask"] != true {
		t.Errorf("encoded retry copy: %+v", p)
	}

	// attempt 2 -> q.retry.svc.work.2 with 500 ms
	if err := h(delivery("2")); err != nil {
		t.Fatal(err)
	}
	if s := pub.last(t); s.topic != "q.retry.svc.work.2" || s.msg.Metadata.Get(wire.MetaExpiration) != "500" || s.msg.Metadata.Get(HeaderAttempt) != "3" {
		t.Errorf("second retry: %s %v", s.topic, s.msg.Metadata)
	}
	// attempt 3 = MaxAttempts -> q.dead.svc.work, no expiration, attempt 3
	if err := h(delivery("3")); err != nil {
		t.Fatal(err)
	}
	s = pub.last(t)
	if s.topic != "q.dead.svc.work" || s.msg.Metadata.Get(HeaderAttempt) != "3" || s.msg.Metadata.Get(wire.MetaExpiration) != "" {
		t.Errorf("dead letter: %s %v", s.topic, s.msg.Metadata)
	}
	m := w.metrics
	for _, c := range []struct {
		got  float64
		want float64
		name string
	}{
		{testutil.ToFloat64(m.retries.WithLabelValues("work")), 2, "retries"},
		{testutil.ToFloat64(m.dead.WithLabelValues("work")), 1, "dead_lettered"},
		{testutil.ToFloat64(m.handled.WithLabelValues("work", OutcomeRetry)), 2, "handled{retry}"},
		{testutil.ToFloat64(m.handled.WithLabelValues("work", OutcomeDeadLetter)), 1, "handled{dead_letter}"},
		{testutil.ToFloat64(m.failures.WithLabelValues("work", ReasonError)), 3, "failures{error}"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestHandlerPanicIsRetried(t *testing.T) {
	pub := &recorder{}
	w := newTestWorker(t, pub, nil, nil)
	h := w.Handler("work", func(*message.Message) error { panic("boom") })
	if err := h(delivery("")); err != nil {
		t.Fatalf("a panic must be retried, not nacked: %v", err)
	}
	s := pub.last(t)
	if s.topic != "q.retry.svc.work.1" || !strings.Contains(s.msg.Metadata.Get(HeaderError), "boom") {
		t.Errorf("panic copy: %s %v", s.topic, s.msg.Metadata)
	}
	if v := testutil.ToFloat64(w.metrics.failures.WithLabelValues("work", ReasonPanic)); v != 1 {
		t.Errorf("failures{panic} = %v", v)
	}
}

func TestHandlerMaxDuration(t *testing.T) {
	pub := &recorder{}
	w := newTestWorker(t, pub, nil, func(c *WorkerConfig) { c.MaxDuration = 50 * time.Millisecond })

	// A handler that honours ctx: its error is a timeout.
	h := w.Handler("work", func(msg *message.Message) error {
		<-msg.Context().Done()
		return msg.Context().Err()
	})
	if err := h(delivery("")); err != nil {
		t.Fatal(err)
	}
	if e := pub.last(t).msg.Metadata.Get(HeaderError); !strings.Contains(e, ErrMaxDuration.Error()) {
		t.Errorf("x-mm-error %q", e)
	}

	// A handler that ignores ctx is abandoned after the grace second, and still joined by Close.
	release := make(chan struct{})
	h = w.Handler("work", func(*message.Message) error { <-release; return nil })
	start := time.Now()
	if err := h(delivery("")); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("abandoning took %v", d)
	}
	if v := testutil.ToFloat64(w.metrics.failures.WithLabelValues("work", ReasonTimeout)); v != 2 {
		t.Errorf("failures{timeout} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(w.metrics.abandoned.WithLabelValues("work")); v != 1 {
		t.Errorf("abandoned = %v, want 1", v)
	}
	close(release)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(w.metrics.abandoned.WithLabelValues("work")); v != 0 {
		t.Errorf("abandoned after it returned = %v, want 0", v)
	}
}

func TestHandlerPublishFailureNacks(t *testing.T) {
	pub := &recorder{err: errors.New("connection lost")}
	w := newTestWorker(t, pub, nil, func(c *WorkerConfig) { c.InitialBackoff = 10 * time.Millisecond })
	h := w.Handler("work", func(*message.Message) error { return errors.New("fail") })
	if err := h(delivery("")); err == nil {
		t.Fatal("the delivery must be nacked when its copy cannot be published")
	}
	if v := testutil.ToFloat64(w.metrics.handled.WithLabelValues("work", OutcomeRequeue)); v != 1 {
		t.Errorf("handled{requeue} = %v", v)
	}
}

func TestMetricsShareRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newTestWorker(t, &recorder{}, reg, nil)
	b := newTestWorker(t, &recorder{}, reg, nil)
	if a.metrics.handled != b.metrics.handled {
		t.Error("two workers on one registry must share the collectors")
	}
	if newSentMetric(reg) != newSentMetric(reg) {
		t.Error("two clients on one registry must share the collector")
	}
}

// BenchmarkHandlerSuccess measures the worker's own cost per task (goroutine, MaxDuration
// timer, copy, metrics) around a no-op handler.
func BenchmarkHandlerSuccess(b *testing.B) {
	w, err := NewWorker(WorkerConfig{Service: "svc", Publisher: &recorder{}, Channels: noChannels{}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	h := w.Handler("work", func(*message.Message) error { return nil })
	msg := delivery("")
	b.ReportAllocs()
	for b.Loop() {
		if err := h(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHandlerDeliveryCancelled: when the delivery's ctx ends while the handler runs (the
// subscriber lost its channel, so the broker redelivers the task), a failure publishes no
// retry copy (it would duplicate the task and burn an attempt): the delivery is nacked.
func TestHandlerDeliveryCancelled(t *testing.T) {
	pub := &recorder{}
	w := newTestWorker(t, pub, nil, nil)
	for name, fn := range map[string]func(cancel context.CancelFunc) message.NoPublishHandlerFunc{
		"honours ctx": func(cancel context.CancelFunc) message.NoPublishHandlerFunc {
			return func(msg *message.Message) error { cancel(); <-msg.Context().Done(); return msg.Context().Err() }
		},
		"own error": func(cancel context.CancelFunc) message.NoPublishHandlerFunc {
			return func(*message.Message) error { cancel(); return errors.New("db down") }
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msg := delivery("2")
			msg.SetContext(ctx)
			if err := w.Handler("work", fn(cancel))(msg); err == nil {
				t.Fatal("a cancelled delivery that failed must be nacked")
			}
			pub.mu.Lock()
			n := len(pub.sent)
			pub.mu.Unlock()
			if n != 0 {
				t.Fatalf("published %d copies of a cancelled delivery, want none (the broker redelivers it)", n)
			}
		})
	}
	if v := testutil.ToFloat64(w.metrics.handled.WithLabelValues("work", OutcomeRequeue)); v != 2 {
		t.Errorf("handled{requeue} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(w.metrics.retries.WithLabelValues("work")); v != 0 {
		t.Errorf("retries = %v, want 0", v)
	}
	// A delivery that succeeds is acked even if its ctx ended meanwhile.
	ctx, cancel := context.WithCancel(context.Background())
	msg := delivery("")
	msg.SetContext(ctx)
	if err := w.Handler("work", func(*message.Message) error { cancel(); return nil })(msg); err != nil {
		t.Errorf("success after cancel: %v", err)
	}
}
