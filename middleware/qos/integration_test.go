package qos_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

var _ qos.FlowControl = (*rabbitmq.Subscriber)(nil)

// queueDepth returns the ready messages of a queue (a passive declare on a raw channel).
func queueDepth(t *testing.T, ch *amqp.Channel, name string) int {
	t.Helper()
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("passive declare %s: %v", name, err)
	}
	return q.Messages
}

// TestBrokerPauseUnderPressure: a limiter whose hard memory limit is below what any Go
// process uses stops intake and pauses the rabbitmq subscription it is attached to, so
// published messages stay in the queue; when the limiter's Run ends (it lifts its
// stop) the subscription resumes and the router takes them all.
func TestBrokerPauseUnderPressure(t *testing.T) {
	url := testbroker.URL(t)
	queue := testbroker.Name("qos.pause")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	raw, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	rch, err := raw.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = rch.QueueDelete(queue, false, false, false) }()

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: testbroker.Name("qos-test")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	stops := make(chan qos.Transition, 4)
	lim, err := qos.New(qos.Config{
		MemoryHardLimit: 1, // any process is over it: forced pressure
		SampleInterval:  10 * time.Millisecond,
		Prefetch:        20,
		OnPressure:      func(tr qos.Transition) { stops <- tr },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	lim.Attach(sub, "")

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(lim.Middleware)
	var handled atomic.Int64
	router.AddConsumerHandler("qos-pause", queue, sub, func(*message.Message) error {
		handled.Add(1)
		return nil
	})

	limCtx, stopLimiter := context.WithCancel(ctx)
	limErr := make(chan error, 1)
	go func() { limErr <- lim.Run(limCtx) }()
	select {
	case tr := <-stops:
		if tr.To != qos.Stopped || !tr.Reasons.Has(qos.ReasonMemoryHard) {
			t.Fatalf("transition %+v, want to stopped for memory_hard", tr)
		}
	case <-ctx.Done():
		t.Fatal("the limiter never stopped intake")
	}
	if !sub.Paused() {
		t.Fatal("subscriber not paused after the stop")
	}

	routerCtx, stopRouter := context.WithCancel(ctx)
	routerErr := make(chan error, 1)
	go func() { routerErr <- router.Run(routerCtx) }()
	<-router.Running()

	const n = 50
	for i := 0; i < n; i++ {
		err := rch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{
			ContentType: "application/json", Body: []byte(`{"i":1}`),
			Headers: amqp.Table{"__mms": amqp.Table{}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The messages stay in the queue, for other instances, while intake is stopped.
	for d := queueDepth(t, rch, queue); d != n; d = queueDepth(t, rch, queue) {
		if ctx.Err() != nil {
			t.Fatalf("queue depth %d while paused, want %d", d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if d := queueDepth(t, rch, queue); d != n {
			t.Fatalf("queue depth %d while paused, want %d", d, n)
		}
	}
	if h := handled.Load(); h != 0 {
		t.Fatalf("%d messages handled while stopped", h)
	}

	// The end of Run lifts the stop and resumes the subscription.
	stopLimiter()
	if err := <-limErr; err != nil {
		t.Fatal(err)
	}
	if sub.Paused() {
		t.Fatal("subscriber still paused after the limiter stopped")
	}
	for handled.Load() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("only %d of %d messages handled after resume", handled.Load(), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
	for d := queueDepth(t, rch, queue); d != 0; d = queueDepth(t, rch, queue) {
		if ctx.Err() != nil {
			t.Fatalf("queue depth %d after resume", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopRouter()
	if err := <-routerErr; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestBrokerLowersPrefetch: under soft memory pressure the subscription's prefetch is
// lowered to twice the limiter's share, and restored when the pressure is released.
func TestBrokerLowersPrefetch(t *testing.T) {
	url := testbroker.URL(t)
	queue := testbroker.Name("qos.prefetch")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: testbroker.Name("qos-test")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: 100,
		Queue: func(topic string) rabbitmq.Queue { return rabbitmq.Queue{Name: topic, AutoDelete: true} }})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	if _, err := sub.Subscribe(subCtx, queue); err != nil {
		t.Fatal(err)
	}

	// Soft limit 1 byte, hard limit off (max int64): pressure without a stop.
	lim, err := qos.New(qos.Config{Mode: qos.Static, MaxInFlight: 8, MemorySoftLimit: 1,
		MemoryHardLimit: 1 << 62, SampleInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	lim.Attach(sub, "")
	limCtx, stopLimiter := context.WithCancel(ctx)
	limErr := make(chan error, 1)
	go func() { limErr <- lim.Run(limCtx) }()
	for sub.Prefetch() != 16 {
		if ctx.Err() != nil {
			t.Fatalf("prefetch %d under pressure, want 16 (2 × limit 8)", sub.Prefetch())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if lim.State() != qos.Pressure || sub.Paused() {
		t.Fatalf("state %v paused %v, want pressure, not paused", lim.State(), sub.Paused())
	}
	stopLimiter()
	if err := <-limErr; err != nil {
		t.Fatal(err)
	}
	if sub.Prefetch() != 100 {
		t.Fatalf("prefetch %d after release, want 100", sub.Prefetch())
	}
}
