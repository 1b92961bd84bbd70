package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

func newPublisher(t testing.TB, conn *rabbitmq.Connection, cfg rabbitmq.PublisherConfig) *rabbitmq.Publisher {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	pub, err := rabbitmq.NewPublisher(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

func TestPublishConcurrentConfirmed(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.pub")
	if _, err := adm.channel().QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	conn := connect(t, testbroker.Name("mmtest.pub"))
	reg := prometheus.NewRegistry()
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Name: "concurrent", Registerer: reg,
		Marshaler: wire.Codec{Persistent: true}})

	const goroutines, each = 50, 40
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := pub.Publish(q, newMsg(`{"n":1}`)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every Publish returned after its confirm: the broker holds them all now.
	if n, _ := adm.depth(q); n != goroutines*each {
		t.Fatalf("queue holds %d messages, want %d", n, goroutines*each)
	}
	if v := metricValue(t, reg, "micromessaging_rabbitmq_confirmed_total", "publisher", "concurrent"); v != goroutines*each {
		t.Fatalf("confirmed_total = %v", v)
	}
	if v := metricValue(t, reg, "micromessaging_rabbitmq_published_total", "publisher", "concurrent"); v != goroutines*each {
		t.Fatalf("published_total = %v", v)
	}
}

func TestPublishBatchInOrder(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.batch")
	if _, err := adm.channel().QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	conn := connect(t, testbroker.Name("mmtest.batch"))
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
	var msgs []*message.Message
	for i := range 100 {
		msgs = append(msgs, newMsg(fmt.Sprint(i)))
	}
	if err := pub.Publish(q, msgs...); err != nil {
		t.Fatal(err)
	}
	ch := adm.channel()
	for i := range 100 {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("get %d: %v %v", i, ok, err)
		}
		if string(d.Body) != fmt.Sprint(i) || d.MessageId != msgs[i].UUID {
			t.Fatalf("message %d: body %q id %s", i, d.Body, d.MessageId)
		}
		if d.ContentType != wire.ContentType {
			t.Fatalf("content type %q", d.ContentType)
		}
	}
}

// TestPublishMandatoryUnroutable publishes routable and unroutable messages from many
// goroutines on one Publisher: exactly the unroutable ones fail with ErrUnroutable.
func TestPublishMandatoryUnroutable(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.mandatory")
	if _, err := adm.channel().QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	nowhere := testbroker.Name("mmtest.nowhere")
	conn := connect(t, testbroker.Name("mmtest.mandatory"))
	reg := prometheus.NewRegistry()
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true, Name: "mandatory", Registerer: reg})

	err := pub.Publish(nowhere, newMsg(`"x"`))
	if !errors.Is(err, rabbitmq.ErrUnroutable) || !errors.Is(err, wire.ErrUnroutable) {
		t.Fatalf("publish to an unbound key: %v, want ErrUnroutable", err)
	}

	const goroutines, each = 20, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				routable := (g+i)%2 == 0
				key := nowhere
				if routable {
					key = q
				}
				err := pub.Publish(key, newMsg(`"x"`))
				if routable && err != nil || !routable && !errors.Is(err, rabbitmq.ErrUnroutable) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("routable=%v: %v", routable, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d wrong outcomes, e.g. %s", len(bad), bad[0])
	}
	if n, _ := adm.depth(q); n != goroutines*each/2 {
		t.Fatalf("queue holds %d, want %d", n, goroutines*each/2)
	}
	if v := metricValue(t, reg, "micromessaging_rabbitmq_returned_total", "publisher", "mandatory"); v != goroutines*each/2+1 {
		t.Fatalf("returned_total = %v, want %d", v, goroutines*each/2+1)
	}
}

func TestPublishNoConfirm(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.noconfirm")
	if _, err := adm.channel().QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	conn := connect(t, testbroker.Name("mmtest.noconfirm"))
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{NoConfirm: true, Mandatory: true})
	for range 200 {
		if err := pub.Publish(q, newMsg(`"x"`)); err != nil {
			t.Fatal(err)
		}
	}
	// Unroutable with NoConfirm: logged and counted, Publish does not know.
	if err := pub.Publish(testbroker.Name("mmtest.nowhere"), newMsg(`"x"`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "200 messages in the queue", func() bool {
		n, _ := adm.depth(q)
		return n == 200
	})
}

// TestPublishDeclaresExchange publishes events to a topic exchange the Publisher
// declares, to a listen queue bound with a pattern.
func TestPublishDeclaresExchange(t *testing.T) {
	adm := newAdmin(t)
	ex := testbroker.Name("mmtest.x")
	t.Cleanup(func() { _ = adm.channel().ExchangeDelete(ex, false, false) })
	conn := connect(t, testbroker.Name("mmtest.x"))
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{
		Exchange: ex, Declare: &rabbitmq.Exchange{Name: ex, Kind: "topic", Durable: true}})
	if err := pub.Publish("nobody.listens", newMsg(`"x"`)); err != nil {
		t.Fatal(err) // not mandatory: dropped by the broker, confirmed
	}
	q := testbroker.Name("mmtest.listen")
	ch := adm.channel()
	if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	if err := ch.QueueBind(q, "svc.*", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"svc.created", "svc.a.b", "other.created"} {
		if err := pub.Publish(key, newMsg(key)); err != nil {
			t.Fatal(err)
		}
	}
	d, ok, err := ch.Get(q, true)
	if err != nil || !ok || string(d.Body) != "svc.created" {
		t.Fatalf("get: %v %v %q", ok, err, d.Body)
	}
	if n, _ := adm.depth(q); n != 0 {
		t.Fatalf("%d more messages matched svc.*", n)
	}
}

func TestPublishMissingExchangeFails(t *testing.T) {
	conn := connect(t, testbroker.Name("mmtest.noexchange"))
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Exchange: testbroker.Name("mmtest.missing")})
	err := pub.Publish("key", newMsg(`"x"`))
	var aerr *amqp.Error
	if !errors.As(err, &aerr) || aerr.Code != amqp.NotFound {
		t.Fatalf("publish to a missing exchange: %v, want a 404 channel error", err)
	}
	// The Publisher recovers with a new channel (and fails the same way, not hanging).
	if err := pub.Publish("key", newMsg(`"x"`)); !errors.As(err, &aerr) {
		t.Fatalf("second publish: %v", err)
	}
}

func TestPublishLifecycleErrors(t *testing.T) {
	url := testbroker.URL(t)
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: testbroker.Name("mmtest.life")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("x", newMsg(`"x"`)); !errors.Is(err, rabbitmq.ErrNotConnected) {
		t.Fatalf("publish before Connect: %v, want ErrNotConnected", err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("x", newMsg(`"x"`)); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Fatalf("publish after Close: %v, want ErrClosed", err)
	}
	if _, err := rabbitmq.NewPublisher(nil, rabbitmq.PublisherConfig{Declare: &rabbitmq.Exchange{}}); err == nil ||
		!strings.Contains(err.Error(), "nil Connection") || !strings.Contains(err.Error(), "Kind is empty") {
		t.Fatalf("NewPublisher with a bad config: %v", err)
	}
}

func TestPublishContextCancelled(t *testing.T) {
	conn := connect(t, testbroker.Name("mmtest.ctx"))
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
	msg := newMsg(`"x"`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msg.SetContext(ctx)
	if err := pub.Publish("x", msg); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a cancelled context: %v", err)
	}
}

func TestPublishUnconfirmed(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.unconf")
	if _, err := adm.channel().QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	name := testbroker.Name("mmtest.unconf")
	conn := connect(t, name)
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true})

	// Routed: no return; the message reaches the queue.
	returned := make(chan string, 4)
	lost, forget, err := pub.PublishUnconfirmed(q, newMsg(`1`), func() { returned <- "routed" })
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the message in the queue", func() bool { n, _ := adm.depth(q); return n == 1 })
	forget()
	forget() // idempotent

	// Unroutable: onReturn runs once, at once.
	msg := newMsg(`2`)
	_, forget2, err := pub.PublishUnconfirmed("mmtest.nobody."+q, msg, func() { returned <- msg.UUID })
	if err != nil {
		t.Fatal(err)
	}
	defer forget2()
	select {
	case id := <-returned:
		if id != msg.UUID {
			t.Fatalf("onReturn of %q, want the unroutable message's", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no return reported for an unroutable message")
	}

	// A forgotten message's return is not reported.
	_, forget3, err := pub.PublishUnconfirmed("mmtest.nobody."+q, newMsg(`3`), func() { returned <- "forgotten" })
	if err != nil {
		t.Fatal(err)
	}
	forget3()
	// Confirmed publishes on the same Publisher still work (their own channel).
	if err := pub.Publish(q, newMsg(`4`)); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("mmtest.nobody."+q, newMsg(`5`)); !errors.Is(err, rabbitmq.ErrUnroutable) {
		t.Fatalf("confirmed unroutable publish: %v, want ErrUnroutable", err)
	}
	select {
	case id := <-returned:
		t.Fatalf("unexpected onReturn %q", id)
	case <-time.After(200 * time.Millisecond):
	}

	// lost closes when the channel the message was written on is lost.
	select {
	case <-lost:
		t.Fatal("lost closed on a live channel")
	default:
	}
	closeConnections(t, name)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("lost not closed after the connection was closed")
	}
}
