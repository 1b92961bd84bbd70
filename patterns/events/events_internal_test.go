package events

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// recorder is a message.Publisher that keeps what it is given (unit tests only).
type recorder struct {
	mu    sync.Mutex
	topic []string
	msgs  []*message.Message
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		r.topic = append(r.topic, topic)
		r.msgs = append(r.msgs, m)
	}
	return nil
}
func (r *recorder) Close() error { return nil }

func TestConfigValidate(t *testing.T) {
	err := Config{Subscriber: gochannel.NewGoChannel(gochannel.Config{}, nil)}.Validate()
	for _, want := range []string{"Service", "Router"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a complaint about %s", err, want)
		}
	}
	if err := (Config{Service: "s"}).Validate(); err == nil {
		t.Error("a Bus with neither publisher nor subscriber must not validate")
	}
	if err := (Config{Service: "s", Publisher: &recorder{}}).Validate(); err != nil {
		t.Errorf("an emit-only Bus is fine: %v", err)
	}
}

func TestEmitOnTheWire(t *testing.T) {
	pub := &recorder{}
	bus, err := New(Config{Service: "svc", Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Emit(context.Background(), "interop", "evt.created", map[string]int{"id": 7}, map[string]string{"h": "v"}); err != nil {
		t.Fatal(err)
	}
	if pub.topic[0] != "interop.evt.created" {
		t.Errorf("routing key %q", pub.topic[0])
	}
	p, err := wire.Codec{}.Marshal(pub.msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	mms, ok := p.Headers["__mms"].(amqp.Table)
	if !ok || len(mms) != 0 {
		t.Errorf("__mms = %#v, want an empty table", p.Headers["__mms"])
	}
	if len(p.Headers) != 2 || p.Headers["h"] != "v" {
		t.Errorf("headers %v: want user headers and __mms only", p.Headers)
	}
	if string(p.Body) != `{"id":7}` || p.ContentType != "application/json" || p.CorrelationId != "" || p.ReplyTo != "" ||
		p.DeliveryMode == amqp.Persistent {
		t.Errorf("publishing %+v: want a transient event, as Node emits it", p)
	}
	// Config.Persistent: deliveryMode 2, nothing else changes.
	persistent, _ := New(Config{Service: "svc", Publisher: pub, Persistent: true})
	if err := persistent.Emit(context.Background(), "interop", "evt.created", map[string]int{"id": 7}, map[string]string{"h": "v"}); err != nil {
		t.Fatal(err)
	}
	pp, err := wire.Codec{}.Marshal(pub.msgs[len(pub.msgs)-1])
	if err != nil {
		t.Fatal(err)
	}
	if pp.DeliveryMode != amqp.Persistent || len(pp.Headers) != 2 || string(pp.Body) != `{"id":7}` {
		t.Errorf("persistent event %+v", pp)
	}

	for _, tc := range []struct {
		body any
		want string
	}{{nil, `""`}, {[]byte(`[1,2]`), `[1,2]`}, {"a<b", `"a<b"`}} {
		if err := bus.Emit(context.Background(), "t", "r", tc.body, nil); err != nil {
			t.Fatal(err)
		}
		if got := string(pub.msgs[len(pub.msgs)-1].Payload); got != tc.want {
			t.Errorf("body %v sent as %s, want %s", tc.body, got, tc.want)
		}
	}
}

func TestEmitErrors(t *testing.T) {
	bus, _ := New(Config{Service: "svc", Publisher: &recorder{}})
	for _, h := range []map[string]string{{"mms.route": "x"}, {"mm.expiration": "1"}, {"__mms": ""}} {
		if err := bus.Emit(context.Background(), "t", "r", nil, h); !errors.Is(err, ErrInvalid) {
			t.Errorf("headers %v: err = %v, want ErrInvalid", h, err)
		}
	}
	if err := bus.Emit(context.Background(), "", "r", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty target: %v", err)
	}
	listenOnly, _ := New(Config{Service: "svc", Subscriber: gochannel.NewGoChannel(gochannel.Config{}, nil), Router: newRouter(t)})
	if err := listenOnly.Emit(context.Background(), "t", "r", nil, nil); !errors.Is(err, ErrNoPublisher) {
		t.Errorf("err = %v, want ErrNoPublisher", err)
	}
	if _, err := (&Bus{cfg: Config{Service: "s"}}).Listen("t", "r", func(*message.Message) error { return nil }); !errors.Is(err, ErrNoSubscriber) {
		t.Errorf("err = %v, want ErrNoSubscriber", err)
	}
}

func newRouter(t *testing.T) *message.Router {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A router closed without ever running waits for its handlers until CloseTimeout:
		// run it first.
		var done chan error
		if !r.IsRunning() {
			done = make(chan error, 1)
			go func() { done <- r.Run(context.Background()) }()
			<-r.Running()
		}
		_ = r.Close()
		if done != nil {
			<-done
		}
	})
	return r
}

func nop(*message.Message) error { return nil }

func TestListenBookkeeping(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	bus, _ := New(Config{Service: "svc", Subscriber: pubsub, Router: newRouter(t)})

	l, err := bus.Listen("orders", "created.*", nop)
	if err != nil {
		t.Fatal(err)
	}
	q, ok := bus.Queue(l.Queue())
	if !ok || !strings.HasPrefix(q.Name, "q.pubSub.svc.") || !q.Exclusive || !q.AutoDelete || q.Durable ||
		q.Exchange != "x.pubSub" || q.Key != "orders.created.*" {
		t.Errorf("queue %+v", q)
	}
	if _, err := bus.Listen("orders", "created.*", nop); !errors.Is(err, ErrDuplicateListen) {
		t.Errorf("second listen: %v, want ErrDuplicateListen", err)
	}
	if _, err := bus.Listen("orders", "#", nop); err != nil {
		t.Errorf("another pattern is fine: %v", err)
	}

	// Stop before the router runs frees the slot; Start takes it again with a new queue.
	old := l.Queue()
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := bus.Queue(old); ok || l.Running() || l.Queue() != "" {
		t.Error("a stopped listener keeps its queue")
	}
	other, err := bus.Listen("orders", "created.*", nop)
	if err != nil {
		t.Fatalf("listen after stop: %v", err)
	}
	if err := l.Start(); !errors.Is(err, ErrDuplicateListen) {
		t.Errorf("restart while the slot is taken: %v", err)
	}
	if err := other.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(); err != nil || l.Queue() == old || l.Queue() == "" {
		t.Errorf("restart: %v, queue %q (old %q)", err, l.Queue(), old)
	}

	// Durable listens: fixed name, and one per name.
	d, err := bus.Listen("orders", "paid", nop, Durable(""))
	if err != nil {
		t.Fatal(err)
	}
	if q, _ := bus.Queue(d.Queue()); q.Name != "q.pubSub.svc.durable.orders.paid" || !q.Durable || q.Exclusive || q.AutoDelete {
		t.Errorf("durable queue %+v", q)
	}
	if _, err := bus.Listen("orders", "refunded", nop, Durable("orders.paid")); !errors.Is(err, ErrDuplicateListen) {
		t.Errorf("same durable name: %v, want ErrDuplicateListen", err)
	}

	// Close stops every listener; Listen and Start fail afterwards.
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if l.Running() || d.Running() {
		t.Error("Close left listeners running")
	}
	if _, err := bus.Listen("orders", "new", nop); !errors.Is(err, ErrClosed) {
		t.Errorf("Listen after Close: %v, want ErrClosed", err)
	}
	if err := l.Start(); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	if err := bus.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestListenOnRunningRouter checks the handler plumbing with gochannel, where the topic is
// the queue name (gochannel has no bindings: the routing itself is tested on the broker).
func TestListenOnRunningRouter(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	r := newRouter(t)
	ctx, cancel := context.WithCancel(context.Background())
	// StartHandlers ties listeners added while the router runs to Run's ctx: cancelling
	// it (below, without Close) must end Run.
	bus, _ := New(Config{Service: "svc", Subscriber: pubsub, Router: r, StartHandlers: func() error { return r.RunHandlers(ctx) }})
	// Keep one handler so that stopping the listener does not close the router.
	if _, err := bus.Listen("keep", "alive", nop); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-r.Running()

	got := make(chan string, 10)
	l, err := bus.Listen("t", "*", func(msg *message.Message) error {
		got <- string(msg.Payload)
		if string(msg.Payload) == `"panic"` {
			panic("handler panic")
		}
		return errors.New("dropped, not redelivered")
	})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(queue, body string) {
		t.Helper()
		if err := pubsub.Publish(queue, message.NewMessage(watermill.NewUUID(), []byte(body))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("got %s, want %s", g, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event %s", want)
		}
	}
	waitFor2 := func() {
		select {
		case g := <-got:
			t.Fatalf("unexpected event %s", g)
		case <-time.After(200 * time.Millisecond):
		}
	}
	<-waitStarted(t, l)
	publish(l.Queue(), `1`)
	waitFor(`1`)
	publish(l.Queue(), `"panic"`)
	waitFor(`"panic"`)
	waitFor2() // neither the error nor the panic made it come back

	// A handler that nacks the message itself gives it back (gochannel redelivers it).
	var nacks sync.Map
	nacker, err := bus.Listen("t", "nack", func(msg *message.Message) error {
		got <- string(msg.Payload)
		if _, again := nacks.LoadOrStore(msg.UUID, true); !again {
			msg.Nack()
			return errors.New("not now")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-waitStarted(t, nacker)
	publish(nacker.Queue(), `"nacked"`)
	waitFor(`"nacked"`)
	waitFor(`"nacked"`) // redelivered once
	waitFor2()

	q1 := l.Queue()
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	<-waitStarted(t, l)
	publish(q1, `"old queue"`)
	publish(l.Queue(), `2`)
	waitFor(`2`)
	waitFor2()
}

func waitStarted(t *testing.T, l *Listener) <-chan struct{} {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handler == nil {
		t.Fatal("listener not running")
	}
	return l.handler.Started()
}

// failingSubscriber refuses to subscribe to queues whose binding key contains "bad".
type failingSubscriber struct {
	message.Subscriber
	bus **Bus
}

func (f failingSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if q, _ := (*f.bus).Queue(topic); strings.Contains(q.Key, "bad") {
		return nil, errors.New("406 PRECONDITION_FAILED")
	}
	return f.Subscriber.Subscribe(ctx, topic)
}

// TestListenSubscribeFailure: a listen the running router cannot subscribe fails, and
// leaves neither its slot taken nor a dead handler that would block later listens.
func TestListenSubscribeFailure(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	r := newRouter(t)
	var bus *Bus
	bus, _ = New(Config{Service: "svc", Subscriber: failingSubscriber{pubsub, &bus}, Router: r})
	if _, err := bus.Listen("keep", "alive", nop); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); _ = r.Close(); <-done }()
	<-r.Running()

	if _, err := bus.Listen("t", "bad", nop); err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
		t.Fatalf("Listen = %v, want the subscriber's error", err)
	}
	got := make(chan struct{}, 1)
	l, err := bus.Listen("t", "good", func(*message.Message) error { got <- struct{}{}; return nil })
	if err != nil {
		t.Fatalf("a later listen: %v", err)
	}
	if err := pubsub.Publish(l.Queue(), message.NewMessage(watermill.NewUUID(), []byte(`1`))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the later listen does not receive")
	}
	if _, err := bus.Listen("t", "bad", nop); err == nil {
		t.Fatal("the failed listen's slot should be free and fail again the same way")
	}
}
