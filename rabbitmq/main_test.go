package rabbitmq_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger logs through t when MM_TEST_VERBOSE is set; otherwise it discards.
func testLogger() watermill.LoggerAdapter { return watermill.NopLogger{} }

// connect returns a connected Connection named name (unique per test), closed at the
// end of the test.
func connect(t testing.TB, name string) *rabbitmq.Connection {
	t.Helper()
	url := testbroker.URL(t)
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{
		URL: url, Name: name, Logger: testLogger(),
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	})
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

// admin is a raw amqp091 channel for test setup and checks (declare, delete, inspect).
type admin struct {
	t    testing.TB
	conn *amqp.Connection
	mu   sync.Mutex
	ch   *amqp.Channel
}

func newAdmin(t testing.TB) *admin {
	t.Helper()
	conn, err := amqp.Dial(testbroker.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	a := &admin{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	return a
}

// channel returns a live channel (a new one after a channel error closed the last).
func (a *admin) channel() *amqp.Channel {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil || a.ch.IsClosed() {
		ch, err := a.conn.Channel()
		if err != nil {
			a.t.Fatalf("admin channel: %v", err)
		}
		a.ch = ch
	}
	return a.ch
}

// deleteLater deletes the queues when the test ends.
func (a *admin) deleteLater(queues ...string) {
	a.t.Cleanup(func() {
		for _, q := range queues {
			if _, err := a.channel().QueueDelete(q, false, false, false); err != nil {
				a.t.Logf("delete queue %s: %v", q, err)
			}
		}
	})
}

// depth returns the number of ready messages in queue (and consumers).
func (a *admin) depth(queue string) (messages, consumers int) {
	q, err := a.channel().QueueDeclarePassive(queue, false, false, false, false, nil)
	if err != nil {
		a.t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages, q.Consumers
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closeConnections closes, from the broker, the connections whose client connection
// name is name (never anybody else's), and returns how many it closed.
func closeConnections(t testing.TB, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_connections", "-q", "--no-table-headers",
		"pid", "client_properties").CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v: %s", err, out)
	}
	want := fmt.Sprintf(`{"connection_name","%s"}`, name)
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, want) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "test").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection %s: %v: %s", pid, err, out)
		}
		n++
	}
	return n
}

// newMsg returns a message with a unique UUID and payload.
func newMsg(payload string) *message.Message {
	return message.NewMessage(watermill.NewUUID(), []byte(payload))
}

// receive reads n messages from ch (acking each unless ack is false) within timeout.
func receive(t testing.TB, ch <-chan *message.Message, n int, timeout time.Duration, ack bool) []*message.Message {
	t.Helper()
	var got []*message.Message
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("message channel closed after %d of %d messages", len(got), n)
			}
			if m == nil {
				t.Fatal("nil message")
			}
			if ack {
				m.Ack()
			}
			got = append(got, m)
		case <-deadline:
			t.Fatalf("received %d of %d messages within %s", len(got), n, timeout)
		}
	}
	return got
}

// noMessage fails when ch yields a message within d.
func noMessage(t testing.TB, ch <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-ch:
		if ok {
			t.Fatalf("unexpected message %s (%q)", m.UUID, m.Payload)
		}
	case <-time.After(d):
	}
}

// metricValue returns the value of the series name{label=value} in reg (0 if absent).
func metricValue(t testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}
