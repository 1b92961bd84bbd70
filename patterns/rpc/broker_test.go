package rpc_test

// Integration tests against a real RabbitMQ (internal/testbroker): a Go server and a Go
// client wired by hand onto Watermill routers, as a user who runs their own router does.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// node is one service instance: two connections, a Watermill router it runs, an
// rpc.Server and an rpc.Client.
type node struct {
	router *message.Router
	server *rpc.Server
	client *rpc.Client
	reqSub *rabbitmq.Subscriber
	reg    *prometheus.Registry
	ctx    context.Context
}

func newNode(t testing.TB, url, service string) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	pubConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "rpc-test " + service})
	if err != nil {
		t.Fatal(err)
	}
	subConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "rpc-test " + service})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := pubConn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := subConn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	requests, _ := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{Mandatory: true})
	replies, _ := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{NoConfirm: true})
	reqSub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	replySub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{
		Queue:     func(topic string) rabbitmq.Queue { return rabbitmq.Queue{Name: topic, Exclusive: true} },
		NoAck:     true,
		Exclusive: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := rpc.NewServer(rpc.ServerConfig{Service: service, Publisher: replies, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := rpc.NewClient(rpc.ClientConfig{Service: service, Publisher: requests, Registerer: reg, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddHandler(r, replySub); err != nil {
		t.Fatal(err)
	}
	n := &node{router: r, server: srv, client: cl, reqSub: reqSub, reg: reg, ctx: ctx}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cl.Close()
		cancel()
		r.Close()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
		for _, c := range []interface{ Close() error }{reqSub, replySub, requests, replies, subConn, pubConn} {
			if err := c.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}
	})
	<-r.Running()
	return n
}

// handle adds a route to the running router and waits until it is consumed; the queue
// is deleted at the end of the test.
func (n *node) handle(t testing.TB, url, route string, h rpc.Handler) {
	t.Helper()
	wh, err := n.server.AddHandler(n.router, n.reqSub, route, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.router.RunHandlers(n.ctx); err != nil {
		t.Fatal(err)
	}
	<-wh.Started()
	q := n.server.Queue(route)
	t.Cleanup(func() { deleteQueue(t, url, q) })
}

func deleteQueue(t testing.TB, url, q string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Errorf("delete %s: %v", q, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDelete(q, false, false, false)
	}
	if err != nil {
		t.Errorf("delete %s: %v", q, err)
	}
}

func echo(ctx context.Context, req *rpc.Request) (any, error) { return req.Body, nil }

func TestBrokerRoundTrip(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-rt")
	n := newNode(t, url, svc)
	var count atomic.Int32
	var gotDeadline time.Time
	var gotHeader, gotID string
	n.handle(t, url, "echo", func(ctx context.Context, req *rpc.Request) (any, error) {
		count.Add(1)
		gotDeadline, _ = ctx.Deadline()
		gotHeader, gotID = req.Header("h"), req.IDRequest
		return req.Body, nil
	})
	n.handle(t, url, "fail", func(ctx context.Context, req *rpc.Request) (any, error) {
		return nil, &rpc.RemoteError{Message: "failed on purpose", CodeString: "boom", Code: 418, Info: map[string]int{"x": 1}}
	})
	n.handle(t, url, "plain", func(ctx context.Context, req *rpc.Request) (any, error) {
		return nil, errors.New("plain error")
	})
	n.handle(t, url, "panic", func(ctx context.Context, req *rpc.Request) (any, error) {
		var m map[string]int
		m["x"] = 1 // nil map: panics
		return nil, nil
	})
	ctx := context.Background()

	t.Run("reply", func(t *testing.T) {
		before := time.Now()
		r, err := n.client.Request(ctx, svc, "echo", map[string]any{"a": []any{1, "x"}},
			rpc.WithTimeout(5*time.Second), rpc.WithHeaders(map[string]string{"h": "v"}), rpc.WithIDRequest("fixed-id"))
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Body) != `{"a":[1,"x"]}` || r.IDRequest != "fixed-id" || !r.End {
			t.Errorf("reply %s %+v", r.Body, r)
		}
		if gotHeader != "v" || gotID != "fixed-id" {
			t.Errorf("handler saw header %q id %q", gotHeader, gotID)
		}
		// The deadline crossed the wire: about 5 s after the call (ms precision).
		want := before.Add(5 * time.Second)
		if d := gotDeadline.Sub(want); d < -time.Second || d > time.Second {
			t.Errorf("handler deadline %v, want about %v", gotDeadline, want)
		}
	})
	t.Run("coded error", func(t *testing.T) {
		_, err := n.client.Request(ctx, svc, "fail", nil)
		var re *rpc.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("got %v", err)
		}
		info, _ := re.Info.(map[string]any)
		if re.Code != 418 || re.CodeString != "boom" || re.Message != "failed on purpose" || info["x"] != 1.0 {
			t.Errorf("remote error %+v", re)
		}
		var we *wire.RemoteError
		if !errors.As(err, &we) || errors.Is(err, rpc.ErrTimeout) {
			t.Errorf("matching: %v", err)
		}
	})
	t.Run("plain error", func(t *testing.T) {
		_, err := n.client.Request(ctx, svc, "plain", nil)
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Code != 500 || re.Message != "plain error" {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("panic", func(t *testing.T) {
		_, err := n.client.Request(ctx, svc, "panic", nil)
		var re *rpc.RemoteError
		if !errors.As(err, &re) || re.Code != 500 || !strings.Contains(re.Message, "nil map") {
			t.Fatalf("got %v", err)
		}
		// The process and the route survive.
		if _, err := n.client.Request(ctx, svc, "echo", 1); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("big body", func(t *testing.T) {
		big := strings.Repeat("y", 1_200_000)
		r, err := n.client.Request(ctx, svc, "echo", map[string]string{"big": big})
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Big string }
		if err := r.Decode(&got); err != nil || got.Big != big {
			t.Errorf("big body: %d bytes back (%v)", len(got.Big), err)
		}
		if enc := r.Header(wire.MetaContentEncoding); enc != "gzip" {
			t.Errorf("reply content encoding %q, want gzip", enc)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		if v := testutil.ToFloat64(counter(t, n.reg, "micromessaging_rpc_client_requests_total", "echo", "ok")); v < 2 {
			t.Errorf("client ok count %v", v)
		}
		if v := testutil.ToFloat64(counter(t, n.reg, "micromessaging_rpc_server_requests_total", "fail", "error")); v != 1 {
			t.Errorf("server error count %v", v)
		}
	})
}

// counter returns the value of a {route,outcome} counter of reg as a collector.
func counter(t *testing.T, reg *prometheus.Registry, name, route, outcome string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == route && labels["outcome"] == outcome {
				g.Set(m.GetCounter().GetValue())
			}
		}
	}
	return g
}

func TestBrokerStream(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-stream")
	n := newNode(t, url, svc)
	n.handle(t, url, "stream", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in struct{ N int }
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		for i := range in.N {
			if err := req.Write(map[string]int{"i": i}); err != nil {
				return nil, err
			}
			if i%5 == 0 && req.Header("pause") != "" {
				time.Sleep(300 * time.Millisecond) // 1.5 s in all, longer than the 1 s timeout: re-armed per chunk
			}
		}
		return map[string]bool{"done": true}, nil
	})
	ctx := context.Background()
	t.Run("iterator", func(t *testing.T) {
		var got []int
		var end *rpc.Reply
		for r, err := range n.client.Stream(ctx, svc, "stream", map[string]int{"n": 25}, rpc.WithTimeout(time.Second),
			rpc.WithHeaders(map[string]string{"pause": "yes"})) {
			if err != nil {
				t.Fatal(err)
			}
			if r.End {
				end = r
				continue
			}
			var c struct{ I int }
			r.Decode(&c)
			got = append(got, c.I)
		}
		if len(got) != 25 || !slices.IsSorted(got) || got[24] != 24 {
			t.Errorf("chunks %v", got)
		}
		if end == nil || string(end.Body) != `{"done":true}` || end.Sequence != 25 {
			t.Errorf("end %+v", end)
		}
	})
	t.Run("callback", func(t *testing.T) {
		var got []int64
		end, err := n.client.Request(ctx, svc, "stream", map[string]int{"n": 25}, rpc.WithTimeout(5*time.Second),
			rpc.OnChunk(func(r *rpc.Reply) error { got = append(got, r.Sequence); return nil }))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 25 || !slices.IsSorted(got) || string(end.Body) != `{"done":true}` {
			t.Errorf("chunks %v end %s", got, end.Body)
		}
	})
}

func TestBrokerFailures(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-fail")
	n := newNode(t, url, svc)
	var slowRuns atomic.Int32
	n.handle(t, url, "slow", func(ctx context.Context, req *rpc.Request) (any, error) {
		slowRuns.Add(1)
		var in struct{ Ms int }
		req.Decode(&in)
		time.Sleep(time.Duration(in.Ms) * time.Millisecond) // ignores ctx on purpose
		return map[string]int{"slept": in.Ms}, nil
	})
	ctx := context.Background()

	t.Run("unroutable is fast", func(t *testing.T) {
		start := time.Now()
		_, err := n.client.Request(ctx, svc, "no-such-route", nil, rpc.WithTimeout(20*time.Second))
		if !errors.Is(err, rpc.ErrUnroutable) {
			t.Fatalf("got %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("unroutable took %v, the timeout was 20 s", d)
		}
	})
	t.Run("timeout, no late reply", func(t *testing.T) {
		dropped := testutil.ToFloat64(gauge(t, n.reg, "micromessaging_rpc_client_dropped_replies_total"))
		slowRuns.Store(0)
		_, err := n.client.Request(ctx, svc, "slow", map[string]int{"ms": 600}, rpc.WithTimeout(200*time.Millisecond))
		if !errors.Is(err, rpc.ErrTimeout) {
			t.Fatalf("got %v", err)
		}
		time.Sleep(time.Second) // the handler finishes; its reply must not be sent
		if slowRuns.Load() != 1 {
			t.Errorf("slow ran %d times", slowRuns.Load())
		}
		if d := testutil.ToFloat64(gauge(t, n.reg, "micromessaging_rpc_client_dropped_replies_total")) - dropped; d != 0 {
			t.Errorf("%v late replies arrived", d)
		}
		if v := testutil.ToFloat64(counter(t, n.reg, "micromessaging_rpc_server_requests_total", "slow", "expired")); v != 1 {
			t.Errorf("server expired count %v", v)
		}
	})
	t.Run("cancel frees the call", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := n.client.Request(cctx, svc, "slow", map[string]int{"ms": 3000}, rpc.WithTimeout(20*time.Second))
		if !errors.Is(err, context.Canceled) || errors.Is(err, rpc.ErrTimeout) {
			t.Fatalf("got %v", err)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("cancel took %v", d)
		}
	})
	t.Run("expired request is not run", func(t *testing.T) {
		time.Sleep(3 * time.Second) // let the cancelled 3 s call finish
		slowRuns.Store(0)
		// A request whose eat passed, sent raw (as a caller with a skewed or slow path would).
		publishRaw(t, url, n.server.Queue("slow"), n.client.ReplyQueue(), "slow", time.Now().Add(-time.Second))
		// A live request behind it shows that the route went on.
		if _, err := n.client.Request(ctx, svc, "slow", map[string]int{"ms": 1}); err != nil {
			t.Fatal(err)
		}
		if slowRuns.Load() != 1 {
			t.Errorf("slow ran %d times, want 1 (the expired request must not run)", slowRuns.Load())
		}
	})
	t.Run("late reply dropped and counted", func(t *testing.T) {
		dropped := testutil.ToFloat64(gauge(t, n.reg, "micromessaging_rpc_client_dropped_replies_total"))
		publishRawReply(t, url, n.client.ReplyQueue(), uuid.NewString())
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if testutil.ToFloat64(gauge(t, n.reg, "micromessaging_rpc_client_dropped_replies_total"))-dropped == 1 {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Error("the stray reply was not counted")
	})
}

// gauge returns an unlabelled metric of reg as a collector holding its value.
func gauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				g.Set(m.GetCounter().GetValue() + m.GetGauge().GetValue())
			}
		}
	}
	return g
}

func rawChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// publishRaw sends a request as a Node peer would, with the given eat.
func publishRaw(t *testing.T, url, queue, replyTo, route string, eat time.Time) {
	t.Helper()
	iat := eat.Add(-time.Second).UnixMilli()
	err := rawChannel(t, url).Publish("", queue, true, false, amqp.Publishing{
		ContentType:   wire.ContentType,
		CorrelationId: uuid.NewString(),
		ReplyTo:       replyTo,
		Headers: amqp.Table{"idRequest": "raw", "__mms": amqp.Table{
			"route": route, "iat": iat, "eat": eat.UnixMilli()}},
		Body: []byte(`{"ms":1}`),
	})
	if err != nil {
		t.Fatal(err)
	}
}

// publishRawReply sends a reply for a correlation id nobody waits for.
func publishRawReply(t *testing.T, url, replyQueue, corrID string) {
	t.Helper()
	err := rawChannel(t, url).Publish("", replyQueue, false, false, amqp.Publishing{
		ContentType:   wire.ContentType,
		CorrelationId: corrID,
		Headers:       amqp.Table{"__mms": amqp.Table{"isError": false, "isEnd": true, "sequence": int8(0)}},
		Body:          []byte(`"late"`),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBrokerLoadBalancing(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-lb")
	var mu sync.Mutex
	served := map[int]int{}
	for i := range 2 {
		n := newNode(t, url, svc)
		n.handle(t, url, "who", func(ctx context.Context, req *rpc.Request) (any, error) {
			mu.Lock()
			served[i]++
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			return i, nil
		})
	}
	caller := newNode(t, url, testbroker.Name("rpc-lb-caller"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				if _, err := caller.client.Request(context.Background(), svc, "who", nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if served[0]+served[1] != 80 || served[0] == 0 || served[1] == 0 {
		t.Errorf("served %v: both instances must get some of the 80 requests", served)
	}
}

// TestBrokerRouteAddedWhileRunning adds a route to a router that already runs.
func TestBrokerRouteAddedWhileRunning(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-late")
	n := newNode(t, url, svc)
	if _, err := n.client.Request(context.Background(), svc, "late", nil); !errors.Is(err, rpc.ErrUnroutable) {
		t.Fatalf("before the route: %v", err)
	}
	n.handle(t, url, "late", func(ctx context.Context, req *rpc.Request) (any, error) { return "here", nil })
	r, err := n.client.Request(context.Background(), svc, "late", nil)
	if err != nil || string(r.Body) != `"here"` {
		t.Fatalf("after the route: %v %v", r, err)
	}
}

func TestBrokerConcurrentCalls(t *testing.T) {
	url := testbroker.URL(t)
	svc := testbroker.Name("rpc-conc")
	n := newNode(t, url, svc)
	n.handle(t, url, "echo", echo)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 20 {
				want := strconv.Itoa(w*100 + i)
				r, err := n.client.Request(context.Background(), svc, "echo", json.RawMessage(want))
				if err != nil || string(r.Body) != want {
					t.Errorf("call %s: %s %v", want, bodyOf(r), err)
					return
				}
			}
		})
	}
	wg.Wait()
	if v := testutil.ToFloat64(gauge(t, n.reg, "micromessaging_rpc_client_in_flight_requests")); v != 0 {
		t.Errorf("in flight after the calls: %v", v)
	}
}

func bodyOf(r *rpc.Reply) string {
	if r == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s", r.Body)
}
