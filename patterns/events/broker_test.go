package events_test

// Integration tests against a real RabbitMQ (internal/testbroker): topic routing,
// fan-out, stop/start, durable shared listens, and the Node wire format both ways.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

const wait = 15 * time.Second // generous: the machine is shared

// instance is one service instance: its own connection, publisher, subscriber, router
// and Bus, wired as the facade does.
type instance struct {
	bus    *events.Bus
	router *message.Router
	conn   *rabbitmq.Connection
	stop   func()
}

var eventExchange = rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}

func newInstance(t *testing.T, service string) *instance {
	t.Helper()
	url := testbroker.URL(t)
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "events-test " + service})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &eventExchange})
	if err != nil {
		t.Fatal(err)
	}
	var bus *events.Bus
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{eventExchange},
		Queue: func(topic string) rabbitmq.Queue {
			q, ok := bus.Queue(topic)
			if !ok {
				t.Errorf("subscriber asked for unknown topic %q", topic)
			}
			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete,
				Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	bus, err = events.New(events.Config{Service: service, Publisher: pub, Subscriber: sub, Router: router})
	if err != nil {
		t.Fatal(err)
	}
	// A handler that stays, so that stopping a test's listeners does not close the router
	// (the facade always has its own, e.g. peer status).
	if _, err := bus.Listen(testbroker.Name("keepalive"), "x", func(*message.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- router.Run(runCtx) }()
	<-router.Running()
	var once sync.Once
	in := &instance{bus: bus, router: router, conn: conn}
	in.stop = func() {
		once.Do(func() {
			stopRun()
			if err := router.Close(); err != nil {
				t.Errorf("router close: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("router run: %v", err)
			}
			_ = sub.Close()
			_ = pub.Close()
			_ = conn.Close()
		})
	}
	t.Cleanup(in.stop)
	return in
}

// collector gathers what a listener hears.
type collector struct {
	mu   sync.Mutex
	keys []string
	msgs []*message.Message
	ch   chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1000)} }

func (c *collector) handle(msg *message.Message) error {
	c.mu.Lock()
	c.keys = append(c.keys, events.RoutingKey(msg))
	c.msgs = append(c.msgs, msg)
	c.mu.Unlock()
	c.ch <- struct{}{}
	return nil
}

// waitN waits until n events arrived, then a little more to catch extra ones.
func (c *collector) waitN(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(wait)
	for i := 0; i < n; i++ {
		select {
		case <-c.ch:
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("got %d events %v, want %d", len(c.keys), c.keys, n)
		}
	}
	time.Sleep(300 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := append([]string(nil), c.keys...)
	sort.Strings(keys)
	return keys
}

func waitListening(t *testing.T, l *events.Listener) {
	t.Helper()
	// The listener's queue exists once the router subscribed: poll it from a raw
	// connection (an exclusive queue of another connection answers 405, a missing one 404).
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if queueExists(t, l.Queue()) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("queue %s never appeared", l.Queue())
}

// queueExists tells whether a queue exists, from a connection of its own.
func queueExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := amqp.Dial(testbroker.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclarePassive(name, false, false, false, false, nil)
	var aerr *amqp.Error
	switch {
	case err == nil:
		return true
	case errors.As(err, &aerr) && aerr.Code == amqp.ResourceLocked:
		return true
	case errors.As(err, &aerr) && aerr.Code == amqp.NotFound:
		return false
	}
	t.Fatalf("passive declare %s: %v", name, err)
	return false
}

func emit(t *testing.T, in *instance, target, route string, body any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := in.bus.Emit(ctx, target, route, body, nil); err != nil {
		t.Fatal(err)
	}
}

func TestTopicWildcards(t *testing.T) {
	in := newInstance(t, testbroker.Name("evsvc"))
	target := testbroker.Name("wild")
	star, hash, exact := newCollector(), newCollector(), newCollector()
	for p, c := range map[string]*collector{"a.*": star, "#": hash, "a.b": exact} {
		l, err := in.bus.Listen(target, p, c.handle)
		if err != nil {
			t.Fatal(err)
		}
		waitListening(t, l)
	}
	for _, r := range []string{"a.b", "a.b.c", "x", "a.z"} {
		emit(t, in, target, r, map[string]string{"r": r})
	}
	k := func(rs ...string) string {
		for i := range rs {
			rs[i] = target + "." + rs[i]
		}
		sort.Strings(rs)
		return strings.Join(rs, " ")
	}
	if got := strings.Join(star.waitN(t, 2), " "); got != k("a.b", "a.z") {
		t.Errorf("a.* heard %s", got)
	}
	if got := strings.Join(hash.waitN(t, 4), " "); got != k("a.b", "a.b.c", "x", "a.z") {
		t.Errorf("# heard %s", got)
	}
	if got := strings.Join(exact.waitN(t, 1), " "); got != k("a.b") {
		t.Errorf("a.b heard %s", got)
	}
}

func TestFanOutToEveryInstance(t *testing.T) {
	service := testbroker.Name("evsvc")
	a, b := newInstance(t, service), newInstance(t, service)
	target := testbroker.Name("fan")
	ca, cb := newCollector(), newCollector()
	la, err := a.bus.Listen(target, "*", ca.handle)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.bus.Listen(target, "*", cb.handle)
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, la)
	waitListening(t, lb)
	for i := range 5 {
		emit(t, a, target, fmt.Sprint("e", i), i)
	}
	if got := ca.waitN(t, 5); len(got) != 5 {
		t.Errorf("instance a heard %v", got)
	}
	if got := cb.waitN(t, 5); len(got) != 5 {
		t.Errorf("instance b heard %v", got)
	}
}

func TestStopAndStartListener(t *testing.T) {
	in := newInstance(t, testbroker.Name("evsvc"))
	target := testbroker.Name("stop")
	c := newCollector()
	l, err := in.bus.Listen(target, "e", c.handle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.bus.Listen(target, "e", c.handle); !errors.Is(err, events.ErrDuplicateListen) {
		t.Fatalf("second listen: %v, want ErrDuplicateListen", err)
	}
	waitListening(t, l)
	emit(t, in, target, "e", 1)
	c.waitN(t, 1)

	q := l.Queue()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := l.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for queueExists(t, q) {
		if time.Now().After(deadline) {
			t.Fatalf("queue %s still exists after Stop", q)
		}
		time.Sleep(50 * time.Millisecond)
	}
	emit(t, in, target, "e", 2) // nobody listens: dropped, as with Node

	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, l)
	emit(t, in, target, "e", 3)
	c.waitN(t, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	var bodies []string
	for _, m := range c.msgs {
		bodies = append(bodies, string(m.Payload))
	}
	if strings.Join(bodies, ",") != "1,3" {
		t.Errorf("heard %v, want 1,3 (2 was emitted while stopped)", bodies)
	}
}

func TestDurableListenSurvivesRestart(t *testing.T) {
	service := testbroker.Name("evsvc")
	target := testbroker.Name("dur")
	name := testbroker.Name("orders")
	queue := events.DurableQueue(service, name)
	t.Cleanup(func() { deleteQueue(t, queue) })

	first := newInstance(t, service)
	c1 := newCollector()
	l, err := first.bus.Listen(target, "*", c1.handle, events.Durable(name))
	if err != nil {
		t.Fatal(err)
	}
	if l.Queue() != queue {
		t.Fatalf("queue %s, want %s", l.Queue(), queue)
	}
	waitListening(t, l)
	emit(t, first, target, "a", 1)
	c1.waitN(t, 1)
	first.stop() // the whole instance goes away

	emitter := newInstance(t, testbroker.Name("emitter"))
	for i := 2; i <= 4; i++ {
		emit(t, emitter, target, "b", i) // emitted while nobody consumes
	}

	// Two new instances share the durable queue: each event is handled once in total.
	second, third := newInstance(t, service), newInstance(t, service)
	shared := newCollector()
	for _, in := range []*instance{second, third} {
		if _, err := in.bus.Listen(target, "*", shared.handle, events.Durable(name)); err != nil {
			t.Fatal(err)
		}
	}
	got := shared.waitN(t, 3)
	if len(got) != 3 {
		t.Fatalf("after the restart heard %v, want the 3 events emitted meanwhile", got)
	}
	for i := 5; i <= 8; i++ {
		emit(t, emitter, target, "c", i)
	}
	if got := shared.waitN(t, 4); len(got) != 7 {
		t.Errorf("two instances heard %d events in total, want each of 7 once", len(got))
	}
}

func deleteQueue(t *testing.T, name string) {
	conn, err := amqp.Dial(testbroker.URLFromEnv())
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Error(err)
		return
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		t.Error(err)
	}
}

// TestNodeWireFormat: an event as a Node peer emits it (raw amqp091: __mms an empty
// table, no deliveryMode, no messageId) reaches a Go listener, and a Go event reaches a
// Node-style listener (exclusive queue bound to x.pubSub) in Node's format.
func TestNodeWireFormat(t *testing.T) {
	in := newInstance(t, testbroker.Name("evsvc"))
	target := testbroker.Name("node")
	c := newCollector()
	l, err := in.bus.Listen(target, "from.node", c.handle)
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, l)

	conn, err := amqp.Dial(testbroker.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// Node's listen: exclusive queue (durable=true as amqplib sends it), bound with the key.
	q, err := ch.QueueDeclare("q.pubSub.nodepeer."+testbroker.Name("l"), true, false, true, false, nil)
	if err == nil {
		err = ch.QueueBind(q.Name, target+".from.go", wire.EventExchange, false, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Node's emit.
	err = ch.Publish(wire.EventExchange, target+".from.node", false, false, amqp.Publishing{
		ContentType: "application/json", Body: []byte(`{"n":1}`),
		Headers: amqp.Table{"__mms": amqp.Table{}, "user": "u", "small": int8(3)},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.waitN(t, 1)
	got := c.msgs[0]
	if string(got.Payload) != `{"n":1}` || got.Metadata.Get("user") != "u" || got.Metadata.Get("small") != "3" ||
		events.RoutingKey(got) != target+".from.node" {
		t.Errorf("Go listener got %s %v", got.Payload, got.Metadata)
	}

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := in.bus.Emit(ctx, target, "from.go", map[string]int{"id": 7}, map[string]string{"h": "v"}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		mms, ok := d.Headers["__mms"].(amqp.Table)
		var body map[string]int
		if d.ContentType != "application/json" || !ok || len(mms) != 0 || json.Unmarshal(d.Body, &body) != nil || body["id"] != 7 ||
			d.Headers["h"] != "v" || d.Headers["idRequest"] != nil || d.CorrelationId != "" || d.ReplyTo != "" {
			t.Errorf("Node listener got %+v headers %v body %s", d, d.Headers, d.Body)
		}
	case <-time.After(wait):
		t.Fatal("the Node-style listener got nothing")
	}
}

// TestDurableListenNewPattern: a durable listen started again under the same name with
// another pattern binds the new key, and the binding of the earlier run stays (as the
// package doc says): the queue gets the events of both.
func TestDurableListenNewPattern(t *testing.T) {
	service := testbroker.Name("evsvc")
	target := testbroker.Name("repat")
	name := testbroker.Name("orders")
	t.Cleanup(func() { deleteQueue(t, events.DurableQueue(service, name)) })

	first := newInstance(t, service)
	l, err := first.bus.Listen(target, "old", newCollector().handle, events.Durable(name))
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, l)
	first.stop()

	second := newInstance(t, service)
	c := newCollector()
	l, err = second.bus.Listen(target, "new", c.handle, events.Durable(name))
	if err != nil {
		t.Fatal(err)
	}
	waitListening(t, l)
	emit(t, second, target, "new", 1)
	emit(t, second, target, "old", 2)
	emit(t, second, target, "other", 3)
	if got := strings.Join(c.waitN(t, 2), " "); got != target+".new "+target+".old" {
		t.Errorf("heard %s, want the new pattern's event and the old binding's", got)
	}
}
