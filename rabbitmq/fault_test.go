package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

func connectCfg(t testing.TB, cfg rabbitmq.ConnectionConfig) *rabbitmq.Connection {
	t.Helper()
	cfg.URL = testbroker.URL(t)
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	conn, err := rabbitmq.NewConnection(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// stateLog records the states a Connection goes through.
type stateLog struct {
	mu     sync.Mutex
	states []rabbitmq.State
	done   chan struct{}
	wg     sync.WaitGroup
}

func watchStates(t testing.TB, conn *rabbitmq.Connection) *stateLog {
	l := &stateLog{done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case s := <-conn.StateChanges():
				l.mu.Lock()
				l.states = append(l.states, s)
				l.mu.Unlock()
			case <-l.done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(l.done); l.wg.Wait() })
	return l
}

func (l *stateLog) sawLossAndRecovery() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lost := false
	for _, s := range l.states {
		if s == rabbitmq.Disconnected || s == rabbitmq.Connecting {
			lost = true
		}
		if lost && s == rabbitmq.Connected {
			return true
		}
	}
	return false
}

// TestConnectionDropRecovers closes the connections of a publisher and a subscriber
// from the broker: both reconnect, the subscriber declares its queues again (an
// exclusive one too) and resumes, and the state and metrics report it.
func TestConnectionDropRecovers(t *testing.T) {
	adm := newAdmin(t)
	pubName, subName := testbroker.Name("mmtest.droppub"), testbroker.Name("mmtest.dropsub")
	reg := prometheus.NewRegistry()
	pubConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: pubName, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second})
	subConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: subName, Registerer: reg, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second})
	states := watchStates(t, subConn)

	durable := testbroker.Name("mmtest.drop")
	svc := testbroker.Name("mmtest")
	listen := wire.ListenQueue(svc, "l")
	events := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	adm.deleteLater(durable)
	sub := newSubscriber(t, subConn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{events},
		Queue: func(topic string) rabbitmq.Queue {
			if topic == listen {
				return rabbitmq.Queue{Name: listen, Exclusive: true,
					Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: svc + ".#"}}}
			}
			return rabbitmq.Queue{Name: topic, Durable: true}
		},
	})
	durableMsgs, err := sub.Subscribe(context.Background(), durable)
	if err != nil {
		t.Fatal(err)
	}
	listenMsgs, err := sub.Subscribe(context.Background(), listen)
	if err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(t, pubConn, rabbitmq.PublisherConfig{Mandatory: true})
	eventPub := newPublisher(t, pubConn, rabbitmq.PublisherConfig{Mandatory: true, Exchange: wire.EventExchange, Declare: &events})

	roundTrip := func(stage string) {
		t.Helper()
		m := newMsg(`"` + stage + `"`)
		if err := pub.Publish(durable, m); err != nil {
			t.Fatalf("%s: publish: %v", stage, err)
		}
		if got := receive(t, durableMsgs, 1, 20*time.Second, true)[0]; got.UUID != m.UUID {
			t.Fatalf("%s: got %s", stage, got.UUID)
		}
		// The exclusive queue went with the old connection; once declared again, events
		// reach it (until then the mandatory publish comes back unroutable).
		e := newMsg(`"` + stage + `"`)
		waitFor(t, 20*time.Second, stage+": event routable", func() bool {
			err := eventPub.Publish(svc+".ev", e)
			if err != nil && !errors.Is(err, rabbitmq.ErrUnroutable) {
				t.Fatalf("%s: publish event: %v", stage, err)
			}
			return err == nil
		})
		if got := receive(t, listenMsgs, 1, 20*time.Second, true)[0]; got.UUID != e.UUID {
			t.Fatalf("%s: got event %s", stage, got.UUID)
		}
	}

	roundTrip("before")
	if n := closeConnections(t, subName); n != 1 {
		t.Fatalf("closed %d subscriber connections, want 1", n)
	}
	waitFor(t, 20*time.Second, "the subscriber connection to come back", states.sawLossAndRecovery)
	if subConn.State() != rabbitmq.Connected {
		t.Fatalf("state %s", subConn.State())
	}
	roundTrip("after subscriber drop")
	if v := metricValue(t, reg, "micromessaging_rabbitmq_reconnects_total", "connection", subName); v != 1 {
		t.Fatalf("reconnects_total = %v", v)
	}
	if v := metricValue(t, reg, "micromessaging_rabbitmq_connection_state", "connection", subName); v != float64(rabbitmq.Connected) {
		t.Fatalf("connection_state = %v", v)
	}
	if n := closeConnections(t, pubName); n != 1 {
		t.Fatalf("closed %d publisher connections, want 1", n)
	}
	roundTrip("after publisher drop") // Publish waits for the reconnect by itself
}

// TestNoConfirmedMessageLost publishes from many goroutines while the connections of
// the publisher and of the consumer are closed from the broker, twice: every message
// whose Publish returned nil is consumed (at least once).
func TestNoConfirmedMessageLost(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.noloss")
	if _, err := adm.channel().QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	pubName, subName := testbroker.Name("mmtest.nolosspub"), testbroker.Name("mmtest.nolosssub")
	pubConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: pubName, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second})
	subConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: subName, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second})
	reg := prometheus.NewRegistry()
	pub := newPublisher(t, pubConn, rabbitmq.PublisherConfig{Marshaler: wire.Codec{Persistent: true}, Name: "noloss", Registerer: reg})
	sub := newSubscriber(t, subConn, rabbitmq.SubscriberConfig{Prefetch: 50})

	var mu sync.Mutex
	consumed := map[string]int{}
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var consumers sync.WaitGroup
	consumers.Add(1)
	go func() {
		defer consumers.Done()
		for m := range msgs {
			if m == nil {
				t.Error("nil message")
				return
			}
			mu.Lock()
			consumed[m.UUID]++
			mu.Unlock()
			m.Ack()
		}
	}()

	// Publish as fast as possible for 4 s (so that confirms are always in flight when a
	// connection is closed), closing both connections at 1.5 s and 3 s.
	const publishers = 20
	var confirmed sync.Map
	var failed atomic.Int32
	var firstErr atomic.Value
	var wg sync.WaitGroup
	stop := time.Now().Add(4 * time.Second)
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				m := newMsg(`"x"`)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				m.SetContext(ctx)
				err := pub.Publish(q, m)
				cancel()
				if err == nil {
					confirmed.Store(m.UUID, true)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for _, at := range []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond} {
		time.Sleep(at)
		if n := closeConnections(t, pubName) + closeConnections(t, subName); n != 2 {
			t.Errorf("closed %d connections, want 2", n)
		}
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		// Publish republishes what a dying channel left unconfirmed, so nothing fails.
		t.Errorf("%d publishes failed, e.g. %v", n, firstErr.Load())
	}
	var want []string
	confirmed.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	if len(want) < 1000 {
		t.Fatalf("only %d messages confirmed", len(want))
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("all %d confirmed messages consumed", len(want)), func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range want {
			if consumed[id] == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	dups := 0
	for _, c := range consumed {
		dups += c - 1
	}
	mu.Unlock()
	t.Logf("%d confirmed, %d consumed (%d redeliveries), %v publishes sent again after a channel loss",
		len(want), len(consumed), dups, metricValue(t, reg, "micromessaging_rabbitmq_publish_retried_total", "publisher", "noloss"))
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	consumers.Wait()
}

// TestPublishDuringOutage: while the connection is down, Publish waits for it, bounded by
// the message context; a Publish started during the outage succeeds after the reconnect.
func TestPublishDuringOutage(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.outage")
	if _, err := adm.channel().QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	adm.deleteLater(q)
	name := testbroker.Name("mmtest.outage")
	// A long backoff makes the outage last 2-4 s after the connection is closed.
	conn := connectCfg(t, rabbitmq.ConnectionConfig{Name: name, BackoffMin: 4 * time.Second, BackoffMax: 4 * time.Second})
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{Mandatory: true})
	if err := pub.Publish(q, newMsg(`"before"`)); err != nil {
		t.Fatal(err)
	}
	if n := closeConnections(t, name); n != 1 {
		t.Fatalf("closed %d connections", n)
	}
	waitFor(t, 5*time.Second, "the connection to be down", func() bool { return conn.State() != rabbitmq.Connected })

	m := newMsg(`"deadline"`)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	m.SetContext(ctx)
	if err := pub.Publish(q, m); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish with a deadline during the outage: %v, want DeadlineExceeded", err)
	}
	if conn.State() == rabbitmq.Connected {
		t.Fatal("the outage ended too early for the next check (backoff 2-4 s)")
	}
	done := make(chan error, 1)
	go func() { done <- pub.Publish(q, newMsg(`"during"`)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if conn.State() != rabbitmq.Connected {
			t.Fatalf("publish returned while %s", conn.State())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publish started during the outage did not finish after the reconnect")
	}
	if n, _ := adm.depth(q); n != 2 {
		t.Fatalf("queue holds %d, want 2", n)
	}
	// Channel, as the election uses it, also waits for the connection.
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = ch.Close()
}

func TestConnectionConfigAndConnect(t *testing.T) {
	_, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: "http://example.com", Heartbeat: -1,
		BackoffMin: 2 * time.Second, BackoffMax: time.Second})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"URL", "Heartbeat", "BackoffMax"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}

	url := testbroker.URL(t)
	uri, err := amqp.ParseURI(url)
	if err != nil {
		t.Fatal(err)
	}
	uri.Password = "wrong-password"
	bad, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: uri.String(), Name: testbroker.Name("mmtest.badpw")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bad.Connect(ctx); err == nil {
		t.Fatal("connected with a wrong password")
	} else if strings.Contains(err.Error(), "wrong-password") {
		t.Fatalf("error shows the password: %v", err)
	}
	if bad.State() != rabbitmq.Disconnected {
		t.Fatalf("state %s after a failed Connect", bad.State())
	}
	_ = bad.Close()

	refused, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: "amqp://guest:guest@127.0.0.1:1/"})
	if err != nil {
		t.Fatal(err)
	}
	if err := refused.Connect(ctx); err == nil {
		t.Fatal("connected to a closed port")
	}
	_ = refused.Close()

	name := testbroker.Name("mmtest.conn")
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if conn.State() != rabbitmq.Disconnected {
		t.Fatal(conn.State())
	}
	if _, err := conn.Channel(ctx); !errors.Is(err, rabbitmq.ErrNotConnected) {
		t.Fatalf("Channel before Connect: %v", err)
	}
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Connect(ctx); err != nil {
		t.Fatalf("second Connect: %v", err)
	}
	if s := <-conn.StateChanges(); s != rabbitmq.Connected {
		t.Fatalf("latest state %s", s)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if conn.State() != rabbitmq.Closed {
		t.Fatal(conn.State())
	}
	if err := conn.Connect(ctx); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Fatalf("Connect after Close: %v", err)
	}
	if _, err := conn.Channel(ctx); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Fatalf("Channel after Close: %v", err)
	}
}

// TestSubscriptionEndsWithConnection: closing the Connection under a running
// subscription ends it cleanly (the message channel closes; no nil message).
func TestSubscriptionEndsWithConnection(t *testing.T) {
	_, q := prefilled(t, 0)
	conn := connect(t, testbroker.Name("mmtest.connclose"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{})
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	select {
	case m, ok := <-msgs:
		if ok {
			t.Fatalf("got message %v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message channel not closed after the Connection closed")
	}
	var _ message.Subscriber = sub
	var _ message.Publisher = (*rabbitmq.Publisher)(nil)
	var _ message.SubscribeInitializer = sub
}
