package tasks_test

// Integration tests against a real RabbitMQ (internal/testbroker): confirmed tasks,
// unroutable tasks, retries with backoff, dead letters, replay, panics, Node-shaped
// tasks and metrics.

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

const wait = 20 * time.Second // generous: the machine is shared

// service is one instance of a service with a worker, wired as the facade does.
type service struct {
	name   string
	conn   *rabbitmq.Connection
	pub    *rabbitmq.Publisher
	sub    *rabbitmq.Subscriber
	router *message.Router
	worker *tasks.Worker
	client *tasks.Client
	reg    *prometheus.Registry
}

func newService(t *testing.T, mod func(*tasks.WorkerConfig)) *service {
	t.Helper()
	s := &service{name: testbroker.Name("tasksvc"), reg: prometheus.NewRegistry()}
	url := testbroker.URL(t)
	var err error
	if s.conn, err = rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "tasks-test " + s.name}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if s.pub, err = rabbitmq.NewPublisher(s.conn, rabbitmq.PublisherConfig{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	s.sub, err = rabbitmq.NewSubscriber(s.conn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{}); err != nil {
		t.Fatal(err)
	}
	cfg := tasks.WorkerConfig{Service: s.name, Publisher: s.pub, Channels: s.conn, Registerer: s.reg}
	if mod != nil {
		mod(&cfg)
	}
	if s.worker, err = tasks.NewWorker(cfg); err != nil {
		t.Fatal(err)
	}
	if s.client, err = tasks.NewClient(tasks.ClientConfig{Publisher: s.pub, Registerer: s.reg}); err != nil {
		t.Fatal(err)
	}
	return s
}

// run adds the handlers and runs the router until the test ends; it returns once the
// request queues exist.
func (s *service) run(t *testing.T, handlers map[string]message.NoPublishHandlerFunc) {
	t.Helper()
	for route, h := range handlers {
		s.router.AddConsumerHandler("tasks."+route, s.worker.Topic(route), s.sub, s.worker.Handler(route, h))
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.router.Run(ctx) }()
	<-s.router.Running()
	t.Cleanup(func() {
		stop()
		if err := s.router.Close(); err != nil {
			t.Errorf("router close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("router run: %v", err)
		}
		if err := s.worker.Close(); err != nil {
			t.Errorf("worker close: %v", err)
		}
		_ = s.sub.Close()
		_ = s.pub.Close()
		for route := range handlers {
			s.deleteQueues(t, route)
		}
		_ = s.conn.Close()
	})
	for route := range handlers {
		deadline := time.Now().Add(wait)
		for s.queueLen(t, wire.RequestQueue(s.name, route)) < 0 {
			if time.Now().After(deadline) {
				t.Fatalf("request queue of %s never appeared", route)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// queueLen returns the number of ready messages in a queue, -1 when it does not exist.
func (s *service) queueLen(t *testing.T, name string) int {
	t.Helper()
	ch, err := s.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func (s *service) deleteQueues(t *testing.T, route string) {
	ch, err := s.conn.Channel(context.Background())
	if err != nil {
		t.Error(err)
		return
	}
	defer ch.Close()
	names := []string{wire.RequestQueue(s.name, route), tasks.DeadQueue(s.name, route)}
	for n := 1; n < 10; n++ {
		names = append(names, tasks.RetryQueue(s.name, route, n))
	}
	for _, q := range names {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Error(err)
			return
		}
	}
}

func (s *service) task(t *testing.T, route string, body any, headers map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.client.Task(ctx, s.name, route, body, headers); err != nil {
		t.Fatal(err)
	}
}

// calls records handler invocations.
type calls struct {
	mu       sync.Mutex
	attempts []int
	at       []time.Time
	msgs     []*message.Message
	ch       chan struct{}
}

func newCalls() *calls { return &calls{ch: make(chan struct{}, 1000)} }

func (c *calls) record(msg *message.Message) {
	c.mu.Lock()
	c.attempts = append(c.attempts, tasks.Attempt(msg))
	c.at = append(c.at, time.Now())
	c.msgs = append(c.msgs, msg)
	c.mu.Unlock()
	c.ch <- struct{}{}
}

func (c *calls) waitN(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(wait)
	for i := 0; i < n; i++ {
		select {
		case <-c.ch:
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("%d calls (attempts %v), want %d", len(c.attempts), c.attempts, n)
		}
	}
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.attempts)
}

func TestTaskConfirmedAndHandled(t *testing.T) {
	s := newService(t, nil)
	c := newCalls()
	s.run(t, map[string]message.NoPublishHandlerFunc{"work": func(msg *message.Message) error { c.record(msg); return nil }})
	for i := range 20 {
		s.task(t, "work", map[string]int{"i": i}, map[string]string{"tenant": "t1"})
	}
	c.waitN(t, 20)
	m := c.msgs[0]
	if m.Metadata.Get("tenant") != "t1" || m.Metadata.Get(wire.MetaMMSIsTask) != "true" || m.Metadata.Get(wire.MetaMMSRoute) != "work" ||
		m.Metadata.Get(wire.HeaderIDRequest) == "" || m.Metadata.Get(wire.MetaCorrelationID) != "" || m.Metadata.Get(wire.MetaReplyTo) != "" {
		t.Errorf("task metadata %v", m.Metadata)
	}
	time.Sleep(200 * time.Millisecond)
	if n := c.count(); n != 20 {
		t.Errorf("%d calls, want 20", n)
	}
	if v := metric(t, s.reg, "micromessaging_tasks_handled_total", map[string]string{"route": "work", "outcome": "success"}); v != 20 {
		t.Errorf("handled{success} = %v, want 20", v)
	}
	if v := metric(t, s.reg, "micromessaging_tasks_sent_total", map[string]string{"route": "work", "outcome": "ok"}); v != 20 {
		t.Errorf("sent{ok} = %v, want 20", v)
	}
}

func TestUnroutableTaskFailsAtOnce(t *testing.T) {
	s := newService(t, nil)
	s.run(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	start := time.Now()
	err := s.client.Task(ctx, s.name, "nobody-serves-this", nil, nil)
	if !errors.Is(err, tasks.ErrUnroutable) {
		t.Fatalf("err = %v, want ErrUnroutable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("unroutable took %v", d)
	}
	if v := metric(t, s.reg, "micromessaging_tasks_sent_total", map[string]string{"route": "nobody-serves-this", "outcome": "unroutable"}); v != 1 {
		t.Errorf("sent{unroutable} = %v", v)
	}
}

func TestRetriesWithBackoffThenDeadLetterThenReplay(t *testing.T) {
	const backoff = 300 * time.Millisecond
	s := newService(t, func(c *tasks.WorkerConfig) { c.MaxAttempts, c.InitialBackoff = 3, backoff })
	c := newCalls()
	var mu sync.Mutex
	failing := true
	s.run(t, map[string]message.NoPublishHandlerFunc{"flaky": func(msg *message.Message) error {
		c.record(msg)
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return errors.New("downstream unavailable")
		}
		return nil
	}})
	s.task(t, "flaky", map[string]string{"job": "x"}, map[string]string{"idRequest": "job-1"})
	c.waitN(t, 3)

	c.mu.Lock()
	attempts, at := append([]int(nil), c.attempts...), append([]time.Time(nil), c.at...)
	for i, m := range c.msgs {
		if m.Metadata.Get(wire.HeaderIDRequest) != "job-1" || string(m.Payload) != `{"job":"x"}` || m.Metadata.Get(wire.MetaMMSRoute) != "flaky" {
			t.Errorf("attempt %d lost data: %s %v", i+1, m.Payload, m.Metadata)
		}
	}
	c.mu.Unlock()
	if len(attempts) != 3 || attempts[0] != 1 || attempts[1] != 2 || attempts[2] != 3 {
		t.Fatalf("attempts %v, want [1 2 3]", attempts)
	}
	// The broker holds each retry at least its delay (lower bounds only: the machine is noisy).
	if d := at[1].Sub(at[0]); d < backoff-50*time.Millisecond {
		t.Errorf("attempt 2 came %v after attempt 1, want >= %v", d, backoff)
	}
	if d := at[2].Sub(at[1]); d < 2*backoff-50*time.Millisecond {
		t.Errorf("attempt 3 came %v after attempt 2, want >= %v", d, 2*backoff)
	}

	dead := tasks.DeadQueue(s.name, "flaky")
	deadline := time.Now().Add(wait)
	for s.queueLen(t, dead) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("dead-letter queue %s holds %d messages, want 1", dead, s.queueLen(t, dead))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * backoff)
	if n := c.count(); n != 3 {
		t.Errorf("%d calls after dead-lettering, want 3", n)
	}
	// Look at the dead letter as a person would (get, then requeue).
	ch, err := s.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(dead, false)
	if err != nil || !ok {
		t.Fatalf("get dead letter: %v %v", ok, err)
	}
	if d.Headers[tasks.HeaderAttempt] != "3" || d.Headers[tasks.HeaderError] != "downstream unavailable" ||
		d.Headers["idRequest"] != "job-1" || d.DeliveryMode != amqp.Persistent {
		t.Errorf("dead letter headers %v mode %d", d.Headers, d.DeliveryMode)
	}
	if mms, _ := d.Headers["__mms"].(amqp.Table); mms["route"] != "flaky" || mms["isTask"] != true {
		t.Errorf("dead letter __mms %v", d.Headers["__mms"])
	}
	_ = d.Nack(false, true)
	ch.Close()

	for name, want := range map[string]float64{"retries_total": 2, "dead_lettered_total": 1} {
		if v := metric(t, s.reg, "micromessaging_tasks_"+name, map[string]string{"route": "flaky"}); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if v := metric(t, s.reg, "micromessaging_tasks_failures_total", map[string]string{"route": "flaky", "reason": "error"}); v != 3 {
		t.Errorf("failures{error} = %v, want 3", v)
	}

	// Replay: the dead letter goes back to the request queue and starts at attempt 1.
	mu.Lock()
	failing = false
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	n, err := tasks.Replay(ctx, s.conn, s.name, "flaky")
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1, nil", n, err)
	}
	c.waitN(t, 1)
	c.mu.Lock()
	last := c.msgs[len(c.msgs)-1]
	c.mu.Unlock()
	if tasks.Attempt(last) != 1 || last.Metadata.Get(tasks.HeaderReplays) != "1" || last.Metadata.Get(wire.HeaderIDRequest) != "job-1" {
		t.Errorf("replayed task metadata %v", last.Metadata)
	}
	if l := s.queueLen(t, dead); l != 0 {
		t.Errorf("dead-letter queue holds %d after replay", l)
	}
	if n, err := tasks.Replay(ctx, s.conn, s.name, "flaky"); n != 0 || err != nil {
		t.Errorf("second Replay = %d, %v; want 0, nil", n, err)
	}
	if n, err := tasks.Replay(ctx, s.conn, s.name, "never-failed"); n != 0 || err != nil {
		t.Errorf("Replay without a dead-letter queue = %d, %v; want 0, nil", n, err)
	}
}

func TestReplayWithoutRequestQueueIsUnroutable(t *testing.T) {
	s := newService(t, nil)
	route := "gone"
	ch, err := s.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dead := tasks.DeadQueue(s.name, route)
	t.Cleanup(func() { s.deleteQueues(t, route); _ = s.conn.Close() })
	if _, err := ch.QueueDeclare(dead, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", dead, false, false, amqp.Publishing{ContentType: "application/json", Body: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	ch.Close()
	for s.queueLen(t, dead) != 1 {
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	n, err := tasks.Replay(ctx, s.conn, s.name, route)
	if n != 0 || !errors.Is(err, tasks.ErrUnroutable) {
		t.Fatalf("Replay = %d, %v; want 0, ErrUnroutable", n, err)
	}
	deadline := time.Now().Add(wait)
	for s.queueLen(t, dead) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the dead letter was lost by a failed replay")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPanicDoesNotRequeueHot(t *testing.T) {
	s := newService(t, func(c *tasks.WorkerConfig) { c.MaxAttempts, c.InitialBackoff = 2, 500*time.Millisecond })
	c := newCalls()
	s.run(t, map[string]message.NoPublishHandlerFunc{"explode": func(msg *message.Message) error {
		c.record(msg)
		panic("kaboom")
	}})
	s.task(t, "explode", nil, nil)
	c.waitN(t, 2)
	time.Sleep(1500 * time.Millisecond)
	if n := c.count(); n != 2 {
		t.Fatalf("a panicking handler ran %d times, want 2 (MaxAttempts)", n)
	}
	if v := metric(t, s.reg, "micromessaging_tasks_failures_total", map[string]string{"route": "explode", "reason": "panic"}); v != 2 {
		t.Errorf("failures{panic} = %v, want 2", v)
	}
	deadline := time.Now().Add(wait)
	for s.queueLen(t, tasks.DeadQueue(s.name, "explode")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the panicking task was not dead-lettered")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNodeShapedTask: a task as a Node peer publishes it (raw amqp091, no deliveryMode,
// no messageId, integers in the smallest width, iat as int64, idRequest header) is
// handled by a Go worker.
func TestNodeShapedTask(t *testing.T) {
	s := newService(t, nil)
	c := newCalls()
	s.run(t, map[string]message.NoPublishHandlerFunc{"work": func(msg *message.Message) error { c.record(msg); return nil }})
	conn, err := amqp.Dial(testbroker.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	iat := time.Now().UnixMilli()
	err = ch.Publish("", wire.RequestQueue(s.name, "work"), true, false, amqp.Publishing{
		ContentType: "application/json", Body: []byte(`{"i":1}`),
		Headers: amqp.Table{
			"idRequest": "node-id-1", "small": int8(7), "big": int64(1) << 40,
			"__mms": amqp.Table{"route": "work", "isTask": true, "iat": iat},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.waitN(t, 1)
	m := c.msgs[0]
	mms, err := wire.MMSFromMetadata(m.Metadata)
	if err != nil || mms.Route != "work" || !mms.IsTask || mms.IAT != iat {
		t.Errorf("__mms %+v %v", mms, err)
	}
	if m.Metadata.Get("idRequest") != "node-id-1" || m.Metadata.Get("small") != "7" || m.Metadata.Get("big") != strconv.FormatInt(1<<40, 10) ||
		string(m.Payload) != `{"i":1}` || tasks.Attempt(m) != 1 {
		t.Errorf("task %s %v", m.Payload, m.Metadata)
	}
}

// metric returns the value of the counter or gauge name{labels} gathered from reg.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// TestConnectionLostWhileHandling: the worker's connection drops while a handler runs.
// The broker redelivers the task; the worker must not also publish a retry copy (that
// would run the task twice and burn an attempt): the redelivery is attempt 1, and no
// attempt 2 ever comes.
func TestConnectionLostWhileHandling(t *testing.T) {
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatal("rabbitmqctl is needed to close the worker's connection from the broker side")
	}
	s := newService(t, func(c *tasks.WorkerConfig) { c.InitialBackoff = 100 * time.Millisecond })
	c := newCalls()
	running := make(chan struct{}, 1)
	s.run(t, map[string]message.NoPublishHandlerFunc{"work": func(msg *message.Message) error {
		c.record(msg)
		if c.count() > 1 {
			return nil
		}
		running <- struct{}{}
		select { // a handler that honours its ctx
		case <-msg.Context().Done():
			return msg.Context().Err()
		case <-time.After(wait):
			return errors.New("the delivery's ctx did not end when its connection was lost")
		}
	}})
	s.task(t, "work", nil, nil)
	select {
	case <-running:
	case <-time.After(wait):
		t.Fatal("the task never ran")
	}
	if n := closeConnection(t, "tasks-test "+s.name); n != 1 {
		t.Fatalf("closed %d connections, want 1", n)
	}
	c.waitN(t, 2)
	time.Sleep(2 * time.Second) // a retry copy would be back after 100 ms
	c.mu.Lock()
	attempts := append([]int(nil), c.attempts...)
	c.mu.Unlock()
	if len(attempts) != 2 || attempts[1] != 1 {
		t.Errorf("attempts %v, want [1 1]: the redelivery only, with no retry copy", attempts)
	}
	if n := s.queueLen(t, tasks.RetryQueue(s.name, "work", 1)); n > 0 {
		t.Errorf("the retry queue holds %d copies", n)
	}
	if v := metric(t, s.reg, "micromessaging_tasks_handled_total", map[string]string{"route": "work", "outcome": "requeue"}); v != 1 {
		t.Errorf("handled{requeue} = %v, want 1", v)
	}
}

// closeConnection closes, from the broker side, the connections whose client connection
// name is name (only this test's), and returns how many.
func closeConnection(t *testing.T, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties").CombinedOutput()
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
		if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "tasks test: connection lost").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
		}
		n++
	}
	return n
}
