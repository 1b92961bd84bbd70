package peerstatus

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// brokerTracker runs a Tracker on a RabbitMQ connection of its own named name, wired as
// the package documentation says (x.pubSub publisher; exclusive auto-delete no-ack queue
// per Subscribe).
func brokerTracker(t *testing.T, service, name string, cfg Config) *Tracker {
	t.Helper()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: testbroker.URL(t), Name: name,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	pubSub := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &pubSub})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{pubSub}, NoAck: true,
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: wire.ListenQueue(service, uuid.NewString()), Exclusive: true, AutoDelete: true,
				Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Service, cfg.Publisher, cfg.Subscriber = service, pub, sub
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- tr.Run(context.Background()) }()
	t.Cleanup(func() {
		tr.Close()
		if err := <-errc; err != nil {
			t.Errorf("%s: Run: %v", name, err)
		}
		sub.Close()
		pub.Close()
		conn.Close()
	})
	select {
	case <-tr.Started():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	}
	return tr
}

func closeConnection(t *testing.T, name string) {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties").CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl: %v: %s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok && strings.Contains(props, fmt.Sprintf(`{"connection_name","%s"}`, name)) {
			if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "peerstatus test").CombinedOutput(); err != nil {
				t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
			}
			n++
		}
	}
	if n != 1 {
		t.Fatalf("closed %d connections named %s, want 1", n, name)
	}
}

func peerState(tr *Tracker, id string) (State, bool) {
	for _, p := range tr.Peers() {
		if p.ID == id {
			return p.State, true
		}
	}
	return Gone, false
}

func TestBrokerMembersAndStatus(t *testing.T) {
	service := testbroker.Name("peers")
	names := []string{testbroker.Name("mm-peer-a"), testbroker.Name("mm-peer-b"), testbroker.Name("mm-peer-c")}
	var trs []*Tracker
	for _, n := range names {
		trs = append(trs, brokerTracker(t, service, n, Config{Interval: 200 * time.Millisecond}))
	}
	for _, tr := range trs {
		eventually(t, "everyone sees 3 members", func() bool { return len(tr.Peers()) == 3 })
	}

	// Another service asks, like Node's getStatus: all three answer, and it returns as
	// soon as they did (knownPeers = 3), not after StatusWait.
	asker := brokerTracker(t, testbroker.Name("asker"), testbroker.Name("mm-peer-asker"), Config{StatusWait: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	st, err := asker.Status(ctx, service)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("Status took %v", took)
	}
	if len(st.Members) != 3 {
		t.Fatalf("Status: %d members", len(st.Members))
	}
	for _, m := range st.Members {
		if m.Service != service || m.KnownPeers != 3 || m.Version != BodyVersion || m.Interval != 200*time.Millisecond || !m.Ready {
			t.Errorf("member %+v", m)
		}
	}

	// The broker drops c's connection: a and b suspect c; c's transport reconnects,
	// re-subscribes and its heartbeats bring it back.
	c := trs[2]
	closeConnection(t, names[2])
	eventually(t, "c back to alive after its reconnect", func() bool {
		s, ok := peerState(trs[0], c.ID())
		return ok && s == Alive && len(c.Peers()) == 3
	})
}

func TestBrokerGoodbyeAndDeath(t *testing.T) {
	service := testbroker.Name("peers")
	a := brokerTracker(t, service, testbroker.Name("mm-peer-a"), Config{Interval: 200 * time.Millisecond})
	bName := testbroker.Name("mm-peer-b")
	b := brokerTracker(t, service, bName, Config{Interval: 200 * time.Millisecond})
	eventually(t, "a sees b", func() bool { _, ok := peerState(a, b.ID()); return ok })

	// b stops cleanly: its goodbye removes it at once.
	b.Close()
	eventually(t, "a forgets b", func() bool { _, ok := peerState(a, b.ID()); return !ok })

	// A member that stops beating (here a single heartbeat of a peer that says it beats
	// every 100 ms) is suspected, then dropped, on its own advertised period.
	ghost := fmt.Sprintf(`{"id":"ghost","name":%q,"isReady":true,"isMaster":false,"elapsedMs":5,"startedAt":"2026-01-01T00:00:00.000Z","memoryUsage":{},"knownPeers":1,"type":%q,"version":1,"intervalMs":100}`,
		service, BodyType)
	if err := a.cfg.Publisher.Publish(AliveTopic(service), message.NewMessage(watermill.NewUUID(), []byte(ghost))); err != nil {
		t.Fatal(err)
	}
	var states []State
	eventually(t, "the ghost is gone", func() bool {
		s, ok := peerState(a, "ghost")
		if ok && (len(states) == 0 || states[len(states)-1] != s) {
			states = append(states, s)
		}
		return !ok && len(states) > 0
	})
	if fmt.Sprint(states) != "[alive suspect]" {
		t.Errorf("ghost went through %v", states)
	}
}
