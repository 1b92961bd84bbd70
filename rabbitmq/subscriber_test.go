package rabbitmq_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

func newSubscriber(t testing.TB, conn *rabbitmq.Connection, cfg rabbitmq.SubscriberConfig) *rabbitmq.Subscriber {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	sub, err := rabbitmq.NewSubscriber(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func queueNamed(q rabbitmq.Queue) func(string) rabbitmq.Queue {
	return func(string) rabbitmq.Queue { return q }
}

// publishRaw publishes with a raw channel to the default exchange.
func publishRaw(t testing.TB, adm *admin, queue string, p amqp.Publishing) {
	t.Helper()
	if err := adm.channel().PublishWithContext(context.Background(), "", queue, false, false, p); err != nil {
		t.Fatal(err)
	}
}

// TestSubscribeRequestQueueDeclaredByNode subscribes to a request queue a Node peer
// declared first (durable, x-expires as int32), declaring it with int32 and with int64
// arguments, and checks that declaring it without the argument is refused.
func TestSubscribeRequestQueueDeclaredByNode(t *testing.T) {
	for _, args := range []amqp.Table{wire.RequestQueueArgs(), {"x-expires": int64(wire.RequestQueueExpiresMs)}} {
		t.Run(fmt.Sprintf("%T", args["x-expires"]), func(t *testing.T) {
			adm := newAdmin(t)
			q := wire.RequestQueue(testbroker.Name("mmtest"), "route")
			// As the Node library declares it.
			if _, err := adm.channel().QueueDeclare(q, true, false, false, false, amqp.Table{"x-expires": int32(86400000)}); err != nil {
				t.Fatal(err)
			}
			adm.deleteLater(q)
			conn := connect(t, testbroker.Name("mmtest.reqq"))
			sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{
				Queue: queueNamed(rabbitmq.Queue{Name: q, Durable: true, Args: args})})
			msgs, err := sub.Subscribe(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true})
			sent := newMsg(`{"a":1}`)
			sent.Metadata.Set(wire.HeaderIDRequest, "req-1")
			if err := pub.Publish(q, sent); err != nil {
				t.Fatal(err)
			}
			got := receive(t, msgs, 1, 10*time.Second, true)[0]
			if got.UUID != sent.UUID || string(got.Payload) != `{"a":1}` || got.Metadata.Get(wire.HeaderIDRequest) != "req-1" {
				t.Fatalf("got %s %q %v", got.UUID, got.Payload, got.Metadata)
			}
		})
	}
	t.Run("without x-expires", func(t *testing.T) {
		adm := newAdmin(t)
		q := wire.RequestQueue(testbroker.Name("mmtest"), "route")
		if _, err := adm.channel().QueueDeclare(q, true, false, false, false, wire.RequestQueueArgs()); err != nil {
			t.Fatal(err)
		}
		adm.deleteLater(q)
		conn := connect(t, testbroker.Name("mmtest.reqq"))
		sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{})
		_, err := sub.Subscribe(context.Background(), q)
		var aerr *amqp.Error
		if !errors.As(err, &aerr) || aerr.Code != amqp.PreconditionFailed {
			t.Fatalf("subscribe with other arguments: %v, want 406 PRECONDITION_FAILED", err)
		}
	})
}

// TestSubscribeReplyQueue consumes an exclusive reply queue without acks.
func TestSubscribeReplyQueue(t *testing.T) {
	adm := newAdmin(t)
	q := wire.ReplyQueue(testbroker.Name("mmtest"), "instance")
	conn := connect(t, testbroker.Name("mmtest.reply"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{
		Queue: queueNamed(rabbitmq.Queue{Name: q, Exclusive: true}), NoAck: true})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	// Exclusive: another connection cannot use it.
	if _, err := adm.channel().QueueDeclare(q, false, false, true, false, nil); err == nil {
		t.Fatal("another connection declared the exclusive queue")
	} else if var405 := new(amqp.Error); !errors.As(err, &var405) || var405.Code != amqp.ResourceLocked {
		t.Fatalf("declare from another connection: %v, want 405", err)
	}
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true})
	for i := range 10 {
		m := newMsg(fmt.Sprint(i))
		m.Metadata.Set(wire.MetaCorrelationID, "c-"+fmt.Sprint(i))
		if err := pub.Publish(q, m); err != nil {
			t.Fatal(err)
		}
	}
	got := receive(t, msgs, 10, 10*time.Second, false) // no-ack: nothing to settle
	for i, m := range got {
		if m.Metadata.Get(wire.MetaCorrelationID) != "c-"+string(m.Payload) {
			t.Fatalf("message %d: %v", i, m.Metadata)
		}
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	// The queue belongs to the connection: it goes with it.
	_ = conn.Close()
	waitFor(t, 10*time.Second, "the exclusive queue to go", func() bool {
		_, err := adm.channel().QueueDeclarePassive(q, false, false, true, false, nil)
		return err != nil
	})
}

// TestSubscribeListenQueue binds an exclusive listen queue to the x.pubSub topic
// exchange with a pattern.
func TestSubscribeListenQueue(t *testing.T) {
	svc := testbroker.Name("mmtest")
	q := wire.ListenQueue(svc, "listen")
	conn := connect(t, testbroker.Name("mmtest.listen"))
	events := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{events},
		Queue: queueNamed(rabbitmq.Queue{Name: q, Exclusive: true,
			Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: wire.EventKey(svc, "*")}}}),
	})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &events})
	for _, key := range []string{wire.EventKey(svc, "a.b"), testbroker.Name("mmtest") + ".created", wire.EventKey(svc, "created")} {
		if err := pub.Publish(key, newMsg(`"`+key+`"`)); err != nil {
			t.Fatal(err)
		}
	}
	got := receive(t, msgs, 1, 10*time.Second, true)[0]
	if rk := got.Metadata.Get(wire.MetaRoutingKey); rk != wire.EventKey(svc, "created") {
		t.Fatalf("got routing key %q", rk)
	}
	if ex := got.Metadata.Get(wire.MetaExchange); ex != wire.EventExchange {
		t.Fatalf("got exchange %q", ex)
	}
	noMessage(t, msgs, 300*time.Millisecond)
}

// TestExclusiveLockQueue checks that exclusive queues declared on Connection.Channel
// work as the election lock: one holder until its connection closes.
func TestExclusiveLockQueue(t *testing.T) {
	lock := wire.LockQueue(testbroker.Name("mmtest"))
	a := connect(t, testbroker.Name("mmtest.lock"))
	b := connect(t, testbroker.Name("mmtest.lock"))
	ctx := context.Background()
	cha, err := a.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cha.QueueDeclare(lock, false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	chb, err := b.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = chb.QueueDeclare(lock, false, false, true, false, nil)
	var aerr *amqp.Error
	if !errors.As(err, &aerr) || aerr.Code != amqp.ResourceLocked {
		t.Fatalf("second declare: %v, want 405 RESOURCE_LOCKED", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b to get the lock", func() bool {
		ch, err := b.Channel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(lock, false, false, true, false, nil); err != nil {
			return false
		}
		return true
	})
}

// hold reads n messages without settling them, then checks that no more come: the
// messages in flight are exactly n.
func hold(t testing.TB, msgs <-chan *message.Message, n int) []*message.Message {
	t.Helper()
	held := receive(t, msgs, n, 10*time.Second, false)
	noMessage(t, msgs, 500*time.Millisecond)
	return held
}

func prefilled(t testing.TB, n int) (*admin, string) {
	t.Helper()
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.q")
	if _, err := adm.channel().QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	for i := range n {
		body, _ := wire.JSON(i)
		publishRaw(t, adm, q, amqp.Publishing{ContentType: wire.ContentType, Body: body, MessageId: fmt.Sprintf("m%03d", i)})
	}
	waitFor(t, 10*time.Second, "the queue to fill", func() bool { n2, _ := adm.depth(q); return n2 == n })
	return adm, q
}

// TestPrefetchInFlight: one subscription hands out Prefetch messages at once and the
// next ones only as earlier ones are settled.
func TestPrefetchInFlight(t *testing.T) {
	_, q := prefilled(t, 30)
	conn := connect(t, testbroker.Name("mmtest.prefetch"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 10})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	held := hold(t, msgs, 10) // the prefetch
	for _, m := range held[:4] {
		m.Ack()
	}
	more := hold(t, msgs, 4) // as many as were acked
	for _, m := range append(held[4:], more...) {
		m.Ack()
	}
	receive(t, msgs, 16, 10*time.Second, true)
}

// TestSetPrefetch changes the prefetch of a running subscription.
func TestSetPrefetch(t *testing.T) {
	_, q := prefilled(t, 30)
	conn := connect(t, testbroker.Name("mmtest.setprefetch"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 2})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	held := hold(t, msgs, 2)
	if err := sub.SetPrefetch(5); err != nil {
		t.Fatal(err)
	}
	if sub.Prefetch() != 5 {
		t.Fatal(sub.Prefetch())
	}
	// The messages delivered under the old limit still settle normally.
	for _, m := range held {
		m.Ack()
	}
	held = hold(t, msgs, 5)
	if err := sub.SetPrefetch(1); err != nil {
		t.Fatal(err)
	}
	// A decrease: no new message until fewer than 1 are in flight.
	noMessage(t, msgs, 300*time.Millisecond)
	for _, m := range held[:4] {
		m.Ack()
	}
	noMessage(t, msgs, 300*time.Millisecond)
	held[4].Ack()
	held = hold(t, msgs, 1)
	held[0].Ack()
	receive(t, msgs, 30-2-5-1, 10*time.Second, true)
	if err := sub.SetPrefetch(0); err == nil {
		t.Fatal("SetPrefetch(0) accepted")
	}
}

// TestPauseResume pauses a subscription with messages in handlers and buffered ones:
// nothing is handed out while paused, the messages in handlers ack fine, and after
// Resume every message is handed out exactly once.
func TestPauseResume(t *testing.T) {
	const n = 40
	adm, q := prefilled(t, n)
	conn := connect(t, testbroker.Name("mmtest.pause"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 10})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	held := receive(t, msgs, 3, 10*time.Second, false) // 3 in handlers, up to 7 buffered
	for _, m := range held {
		seen[m.UUID]++
	}
	if err := sub.Pause(); err != nil {
		t.Fatal(err)
	}
	if !sub.Paused() {
		t.Fatal("not paused")
	}
	noMessage(t, msgs, 500*time.Millisecond)
	for _, m := range held {
		m.Ack() // in flight before the pause: still acks
	}
	noMessage(t, msgs, 300*time.Millisecond)
	_, consumers := adm.depth(q)
	if consumers != 0 {
		t.Fatalf("%d consumers while paused", consumers)
	}
	if err := sub.Resume(); err != nil {
		t.Fatal(err)
	}
	for _, m := range receive(t, msgs, n-3, 10*time.Second, true) {
		seen[m.UUID]++
	}
	noMessage(t, msgs, 300*time.Millisecond)
	if len(seen) != n {
		t.Fatalf("%d distinct messages, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("message %s handed out %d times", id, c)
		}
	}
	// Pause and Resume again with nothing in flight; then everything is settled.
	if err := sub.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if depth, _ := adm.depth(q); depth != 0 {
		t.Fatalf("%d messages left in the queue", depth)
	}
}

// TestNackRequeuesAfterDelay nacks one message again and again: it comes back after
// the nack delay each time instead of spinning.
func TestNackRequeuesAfterDelay(t *testing.T) {
	_, q := prefilled(t, 1)
	conn := connect(t, testbroker.Name("mmtest.nack"))
	reg := prometheus.NewRegistry()
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{NackDelay: 300 * time.Millisecond, Name: "nack", Registerer: reg})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deliveries := 0
	var last time.Time
	for time.Since(start) < 2*time.Second {
		select {
		case m := <-msgs:
			now := time.Now()
			if deliveries > 0 {
				if gap := now.Sub(last); gap < 200*time.Millisecond {
					t.Fatalf("redelivered %s after the nack (delay 300 ms, jitter 75-125 %%)", gap)
				}
				if m.Metadata.Get(wire.MetaRedelivered) != "true" {
					t.Fatalf("redelivery not flagged: %v", m.Metadata)
				}
			}
			deliveries++
			last = now
			m.Nack()
		case <-time.After(5 * time.Second):
			t.Fatal("message not redelivered")
		}
	}
	if deliveries < 3 || deliveries > 12 {
		t.Fatalf("%d deliveries in 2 s with a 300 ms nack delay", deliveries)
	}
	// The last nack is counted by the subscription shortly after Nack returns.
	waitFor(t, 5*time.Second, fmt.Sprintf("nacked_total = %d", deliveries), func() bool {
		return int(metricValue(t, reg, "micromessaging_rabbitmq_nacked_total", "subscriber", "nack")) == deliveries
	})
}

func gzipGarbage() []byte {
	// A gzip header followed by junk: the gzip reader fails.
	return append([]byte{0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0xff}, bytes.Repeat([]byte{0xde, 0xad}, 32)...)
}

// TestUndecodableMessage: a gzip body that does not inflate is rejected without requeue
// (dead-lettered when the queue has a dead-letter exchange), counted, and the
// subscription carries on.
func TestUndecodableMessage(t *testing.T) {
	for _, withDLX := range []bool{true, false} {
		t.Run(fmt.Sprintf("dlx=%v", withDLX), func(t *testing.T) {
			adm := newAdmin(t)
			ch := adm.channel()
			q := testbroker.Name("mmtest.poison")
			var args amqp.Table
			var dlq string
			if withDLX {
				dlx := testbroker.Name("mmtest.dlx")
				dlq = testbroker.Name("mmtest.dlq")
				if err := ch.ExchangeDeclare(dlx, "fanout", false, true, false, false, nil); err != nil {
					t.Fatal(err)
				}
				if _, err := ch.QueueDeclare(dlq, false, false, false, false, nil); err != nil {
					t.Fatal(err)
				}
				adm.deleteLater(dlq)
				if err := ch.QueueBind(dlq, "", dlx, false, nil); err != nil {
					t.Fatal(err)
				}
				args = amqp.Table{"x-dead-letter-exchange": dlx}
			}
			if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
				t.Fatal(err)
			}
			adm.deleteLater(q)
			conn := connect(t, testbroker.Name("mmtest.poison"))
			reg := prometheus.NewRegistry()
			sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{
				Queue: queueNamed(rabbitmq.Queue{Name: q, Durable: true, Args: args}), Name: "poison", Registerer: reg})
			msgs, err := sub.Subscribe(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			publishRaw(t, adm, q, amqp.Publishing{ContentType: wire.ContentType, ContentEncoding: "gzip", Body: gzipGarbage(), MessageId: "poison"})
			publishRaw(t, adm, q, amqp.Publishing{ContentType: wire.ContentType, Body: []byte(`"fine"`), MessageId: "fine"})
			got := receive(t, msgs, 1, 10*time.Second, true)[0]
			if got.UUID != "fine" {
				t.Fatalf("got %s", got.UUID)
			}
			noMessage(t, msgs, 500*time.Millisecond)
			if v := metricValue(t, reg, "micromessaging_rabbitmq_undecodable_total", "subscriber", "poison"); v != 1 {
				t.Fatalf("undecodable_total = %v, want 1 (not requeued in a loop)", v)
			}
			if withDLX {
				waitFor(t, 5*time.Second, "the poison message in the dead-letter queue", func() bool {
					n, _ := adm.depth(dlq)
					return n == 1
				})
			}
			if n, _ := adm.depth(q); n != 0 {
				t.Fatalf("%d messages left in the queue", n)
			}
		})
	}
}

// TestBrokerCancelsConsumer deletes the queue under a subscription: no empty message
// comes out, the message in a handler still acks, the queue is declared again and
// consuming resumes.
func TestBrokerCancelsConsumer(t *testing.T) {
	adm, q := prefilled(t, 1)
	conn := connect(t, testbroker.Name("mmtest.cancel"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	held := receive(t, msgs, 1, 10*time.Second, false)[0]
	if _, err := adm.channel().QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	noMessage(t, msgs, 300*time.Millisecond) // receive/noMessage fail on a nil message
	held.Ack()
	waitFor(t, 10*time.Second, "the queue declared again with a consumer", func() bool {
		q2, err := adm.channel().QueueDeclarePassive(q, true, false, false, false, nil)
		return err == nil && q2.Consumers == 1
	})
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true})
	m := newMsg(`"after"`)
	if err := pub.Publish(q, m); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, msgs, 1, 10*time.Second, true)[0]; got.UUID != m.UUID {
		t.Fatalf("got %s", got.UUID)
	}
}

// TestCloseDrainsInFlight: Close stops handing out messages at once but waits for the
// handlers to settle the messages they hold, and their acks reach the broker.
func TestCloseDrainsInFlight(t *testing.T) {
	adm, q := prefilled(t, 20)
	conn := connect(t, testbroker.Name("mmtest.drain"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 5})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	held := receive(t, msgs, 5, 10*time.Second, false)
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	// The message channel closes without waiting for the handlers.
	select {
	case _, ok := <-msgs:
		if ok {
			t.Fatal("message handed out after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message channel not closed")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while handlers hold messages", err)
	case <-time.After(300 * time.Millisecond):
	}
	for _, m := range held {
		if m.Context().Err() != nil {
			t.Fatal("message context cancelled before its ack")
		}
		m.Ack()
		select {
		case <-m.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatal("message context not cancelled after the ack")
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n, _ := adm.depth(q); n != 15 {
		t.Fatalf("queue holds %d, want 15: acks of the drained messages lost?", n)
	}
	if _, err := sub.Subscribe(context.Background(), q); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
	if err := sub.Pause(); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Fatalf("Pause after Close: %v", err)
	}
}

// TestCloseTimeout: a message never settled is given up after CloseTimeout: its context
// is cancelled and the broker delivers it again.
func TestCloseTimeout(t *testing.T) {
	_, q := prefilled(t, 1)
	conn := connect(t, testbroker.Name("mmtest.closetimeout"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{CloseTimeout: 300 * time.Millisecond})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	held := receive(t, msgs, 1, 10*time.Second, false)[0]
	start := time.Now()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("Close returned after %s, before the timeout", d)
	}
	select {
	case <-held.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context of the abandoned message not cancelled")
	}
	sub2 := newSubscriber(t, conn, rabbitmq.SubscriberConfig{})
	msgs2, err := sub2.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	got := receive(t, msgs2, 1, 10*time.Second, true)[0]
	if got.UUID != held.UUID || got.Metadata.Get(wire.MetaRedelivered) != "true" {
		t.Fatalf("got %s redelivered=%s", got.UUID, got.Metadata.Get(wire.MetaRedelivered))
	}
}

// TestSubscribeContextEnds: the message channel closes when the Subscribe ctx ends, the
// buffered messages go back to the queue and the Subscriber stays usable.
func TestSubscribeContextEnds(t *testing.T) {
	adm, q := prefilled(t, 10)
	conn := connect(t, testbroker.Name("mmtest.subctx"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 10})
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	receive(t, msgs, 2, 10*time.Second, true)
	cancel()
	for m := range msgs { // a message handed out in the meantime, if any
		m.Ack()
	}
	waitFor(t, 10*time.Second, "the subscription to end and requeue its buffered messages", func() bool {
		n, consumers := adm.depth(q)
		return consumers == 0 && n >= 1 && n <= 8
	})
	msgs2, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := adm.depth(q)
	receive(t, msgs2, n, 10*time.Second, true)
}

func TestSubscriberConfigValidate(t *testing.T) {
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: -1, CloseTimeout: -1,
		Declare: []rabbitmq.Exchange{{Name: "x"}}})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"prefetch -1", "CloseTimeout", "Kind is empty"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(context.Background(), "x"); !errors.Is(err, rabbitmq.ErrNotConnected) {
		t.Fatalf("Subscribe before Connect: %v", err)
	}
}

func TestSubscribeFunc(t *testing.T) {
	for _, noAck := range []bool{false, true} {
		t.Run(fmt.Sprintf("noAck=%v", noAck), func(t *testing.T) {
			adm := newAdmin(t)
			q := testbroker.Name("mmtest.subfn")
			adm.deleteLater(q)
			conn := connect(t, testbroker.Name("mmtest.subfn"))
			sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{NoAck: noAck,
				Queue: func(topic string) rabbitmq.Queue { return rabbitmq.Queue{Name: topic} }})
			got := make(chan string, 10)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done, err := sub.SubscribeFunc(ctx, q, func(m *message.Message) {
				got <- string(m.Payload)
				m.Ack()
			})
			if err != nil {
				t.Fatal(err)
			}
			pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
			for i := range 5 {
				if err := pub.Publish(q, newMsg(fmt.Sprint(i))); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 5 {
				select {
				case p := <-got:
					if p != fmt.Sprint(i) {
						t.Fatalf("message %d: payload %s (out of order)", i, p)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("message %d not handed to fn", i)
				}
			}
			// Acked (or no-ack): nothing is left in the queue once the acks are sent.
			waitFor(t, 10*time.Second, "the queue to be empty", func() bool {
				n, _ := adm.depth(q)
				return n == 0
			})
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("done not closed after the ctx ended")
			}
			if _, err := sub.SubscribeFunc(context.Background(), q, nil); err == nil {
				t.Fatal("nil fn accepted")
			}
		})
	}
}
