package tasks

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

func TestTaskOnTheWire(t *testing.T) {
	pub := &recorder{}
	c, err := NewClient(ClientConfig{Publisher: pub, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.UnixMilli(1_700_000_000_123) }
	if err := c.Task(context.Background(), "svc", "work", map[string]int{"i": 1}, map[string]string{"tenant": "t1"}); err != nil {
		t.Fatal(err)
	}
	s := pub.last(t)
	if s.topic != "q.requests.svc.work" {
		t.Errorf("topic %q", s.topic)
	}
	p, err := wire.Codec{}.Marshal(s.msg)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.Body) != `{"i":1}` || p.ContentType != "application/json" || p.DeliveryMode != amqp.Persistent {
		t.Errorf("publishing %+v", p)
	}
	if p.CorrelationId != "" || p.ReplyTo != "" || p.Expiration != "" {
		t.Errorf("a task has no correlationId, replyTo or expiration: %+v", p)
	}
	mms := p.Headers["__mms"].(amqp.Table)
	want := amqp.Table{"route": "work", "isTask": true, "iat": int64(1_700_000_000_123)}
	if fmt.Sprint(mms) != fmt.Sprint(want) {
		t.Errorf("__mms = %#v, want %#v", mms, want)
	}
	if id, _ := p.Headers["idRequest"].(string); len(id) != 36 {
		t.Errorf("idRequest %q, want a UUID", id)
	}
	if p.Headers["tenant"] != "t1" || len(p.Headers) != 3 {
		t.Errorf("headers %v", p.Headers)
	}

	// A given idRequest is kept; raw JSON is sent as it is; nil is "".
	if err := c.Task(context.Background(), "svc", "work", []byte(`[1]`), map[string]string{"idRequest": "mine"}); err != nil {
		t.Fatal(err)
	}
	if s := pub.last(t); s.msg.Metadata.Get("idRequest") != "mine" || string(s.msg.Payload) != `[1]` {
		t.Errorf("got %v %s", s.msg.Metadata, s.msg.Payload)
	}
	if err := c.Task(context.Background(), "svc", "work", nil, nil); err != nil {
		t.Fatal(err)
	}
	if s := pub.last(t); string(s.msg.Payload) != `""` {
		t.Errorf("nil body sent as %s", s.msg.Payload)
	}
}

func TestTaskErrors(t *testing.T) {
	pub := &recorder{}
	c, _ := NewClient(ClientConfig{Publisher: pub})
	for _, tc := range []struct {
		service, route string
		headers        map[string]string
	}{
		{"", "r", nil}, {"s", "", nil},
		{"s", "r", map[string]string{"mms.route": "x"}},
		{"s", "r", map[string]string{"mm.reply_to": "x"}},
		{"s", "r", map[string]string{"__mms": "x"}},
	} {
		if err := c.Task(context.Background(), tc.service, tc.route, nil, tc.headers); !errors.Is(err, ErrInvalid) {
			t.Errorf("Task(%q, %q, %v) = %v, want ErrInvalid", tc.service, tc.route, tc.headers, err)
		}
	}
	if len(pub.sent) != 0 {
		t.Errorf("invalid tasks were published")
	}
	if _, err := NewClient(ClientConfig{}); err == nil {
		t.Error("NewClient without a publisher must fail")
	}
}

func TestTaskUnroutableMetric(t *testing.T) {
	pub := &recorder{err: fmt.Errorf("rabbitmq: publish: %w", wire.ErrUnroutable)}
	c, _ := NewClient(ClientConfig{Publisher: pub, Registerer: prometheus.NewRegistry()})
	err := c.Task(context.Background(), "svc", "nobody", nil, nil)
	if !errors.Is(err, ErrUnroutable) {
		t.Fatalf("err = %v, want ErrUnroutable", err)
	}
	if v := testutil.ToFloat64(c.sent.WithLabelValues("nobody", SentUnroutable)); v != 1 {
		t.Errorf("sent{unroutable} = %v", v)
	}
}

func TestNames(t *testing.T) {
	if got := RetryQueue("svc", "a.b", 2); got != "q.retry.svc.a.b.2" {
		t.Error(got)
	}
	if got := DeadQueue("svc", "a.b"); got != "q.dead.svc.a.b" {
		t.Error(got)
	}
	args := retryQueueArgs("svc", "r")
	if args["x-dead-letter-exchange"] != "" || args["x-dead-letter-routing-key"] != "q.requests.svc.r" || len(args) != 2 {
		t.Errorf("retry args %v", args)
	}
}
