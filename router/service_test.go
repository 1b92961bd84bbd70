package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  router.Config
		want []string
	}{
		{"", router.Config{}, []string{"service name is empty"}},
		{"my service", router.Config{}, []string{"white space"}},
		{"ok", router.Config{Timeout: -1, Prefetch: -1}, []string{"Timeout", "Prefetch"}},
		{"bad url", router.Config{URL: "http://x"}, nil},
	} {
		_, err := router.New(tc.name, tc.cfg)
		if err == nil {
			t.Errorf("New(%q, %+v) accepted", tc.name, tc.cfg)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("New(%q): %v lacks %q", tc.name, err, w)
			}
		}
	}
	s, err := router.New("ok", router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if id, err := uuid.Parse(s.ID()); err != nil || id.Version() != 4 {
		t.Errorf("ID %q is not a UUID v4", s.ID())
	}
	if err := s.Handle("a route", echo); !errors.Is(err, router.ErrInvalidName) {
		t.Errorf("Handle with a space: %v", err)
	}
	if err := s.Handle("", echo); !errors.Is(err, router.ErrInvalidName) {
		t.Errorf("Handle empty: %v", err)
	}
	if err := s.Handle("r", echo); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle("r", echo); !errors.Is(err, router.ErrDuplicateRoute) {
		t.Errorf("Handle twice: %v", err)
	}
	if _, err := s.Request(context.Background(), "x", "y", nil); !errors.Is(err, router.ErrNotConnected) {
		t.Errorf("Request before Connect: %v", err)
	}
}

func echo(ctx context.Context, req *rpc.Request) (any, error) { return req.Body, nil }

// newService returns a Service on the test broker, closed at the end of the test
// (request queues of name deleted).
func newService(t *testing.T, url, name string, cfg router.Config) *router.Service {
	t.Helper()
	cfg.URL = url
	s, err := router.New(name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// cleanupQueues deletes the request queues of service's routes at the end of the test.
func cleanupQueues(t *testing.T, url, service string, routes ...string) {
	t.Cleanup(func() {
		ch := rawChannel(t, url)
		for _, r := range routes {
			if _, err := ch.QueueDelete(wire.RequestQueue(service, r), false, false, false); err != nil {
				t.Errorf("delete queue: %v", err)
				return
			}
		}
	})
}

func rawChannel(t *testing.T, url string) *amqp.Channel {
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

func TestServiceRequest(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router")
	cleanupQueues(t, url, name, "request-name", "stream", "fail")
	reg := prometheus.NewRegistry()
	server := newService(t, url, name, router.Config{Registerer: reg})
	// Registered before Connect.
	if err := server.Handle("request-name", func(ctx context.Context, req *rpc.Request) (any, error) {
		return map[string]string{"im": "fine"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := server.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := server.Connect(ctx); err != nil { // a no-op
		t.Fatal(err)
	}
	// Registered after Connect: consumed when Handle returns.
	if err := server.Handle("stream", func(ctx context.Context, req *rpc.Request) (any, error) {
		for i := range 3 {
			req.Write(i)
		}
		return "end", nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := server.Handle("fail", func(ctx context.Context, req *rpc.Request) (any, error) {
		return nil, &rpc.RemoteError{Message: "nope", CodeString: "forbidden", Code: 403}
	}); err != nil {
		t.Fatal(err)
	}

	client := newService(t, url, testbroker.Name("router-client"), router.Config{Registerer: reg}) // a shared registry
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := client.Request(ctx, name, "request-name", map[string]any{"how": map[string]string{"are": "you?"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Body) != `{"im":"fine"}` {
		t.Errorf("reply %s", r.Body)
	}
	var seqs []int64
	for r, err := range client.Stream(ctx, name, "stream", nil) {
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Sequence)
	}
	if len(seqs) != 4 || seqs[3] != 3 {
		t.Errorf("stream sequences %v", seqs)
	}
	_, err = client.Request(ctx, name, "fail", nil)
	var re *rpc.RemoteError
	if !errors.As(err, &re) || re.Code != 403 || re.CodeString != "forbidden" {
		t.Errorf("fail: %v", err)
	}
	if _, err := client.Request(ctx, name, "nobody", nil); !errors.Is(err, rpc.ErrUnroutable) {
		t.Errorf("unroutable: %v", err)
	}
}

// TestRunTwice: Run twice (concurrently, and Connect besides) connects once: one
// consumer per route; Handle after Run started works; both Runs end on cancel.
func TestRunTwice(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-run")
	cleanupQueues(t, url, name, "echo", "later")
	s := newService(t, url, name, router.Config{})
	if err := s.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() { errs <- s.Run(ctx) })
	}
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle("later", echo); err != nil {
		t.Fatal(err)
	}
	ch := rawChannel(t, url)
	for _, route := range []string{"echo", "later"} {
		q, err := ch.QueueDeclarePassive(wire.RequestQueue(name, route), true, false, false, false, wire.RequestQueueArgs())
		if err != nil {
			t.Fatal(err)
		}
		if q.Consumers != 1 {
			t.Errorf("%s has %d consumers, want 1", route, q.Consumers)
		}
	}
	if _, err := s.Request(ctx, name, "later", "x"); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	if err := s.Handle("after-close", echo); !errors.Is(err, router.ErrClosed) {
		t.Errorf("Handle after close: %v", err)
	}
	if err := s.Connect(context.Background()); !errors.Is(err, router.ErrClosed) {
		t.Errorf("Connect after close: %v", err)
	}
}

// TestCloseFreesCalls: a call in flight fails with rpc.ErrClosed when its Service closes.
func TestCloseFreesCalls(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-close")
	cleanupQueues(t, url, name, "slow")
	server := newService(t, url, name, router.Config{})
	server.Handle("slow", func(ctx context.Context, req *rpc.Request) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ctx := context.Background()
	if err := server.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	client := newService(t, url, testbroker.Name("router-close-client"), router.Config{})
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { client.Close() })
	start := time.Now()
	_, err := client.Request(ctx, name, "slow", nil, rpc.WithTimeout(3*time.Second))
	if !errors.Is(err, rpc.ErrClosed) {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("Close freed the call after %v", d)
	}
	if _, err := client.Request(ctx, name, "slow", nil); !errors.Is(err, router.ErrClosed) && !errors.Is(err, rpc.ErrClosed) {
		t.Errorf("Request after Close: %v", err)
	}
}

// TestUserRouter: the Service's handlers run on a Watermill router the user owns and
// runs; Service.Close stops only them.
func TestUserRouter(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-own")
	cleanupQueues(t, url, name, "echo")
	wm, err := message.NewRouter(message.RouterConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newService(t, url, name, router.Config{Router: wm})
	if s.Router() != wm {
		t.Error("Router() is not the user's router")
	}
	if err := s.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int32 // requests that went through the user's router middleware
	wm.AddMiddleware(countRequests(&seen, wire.RequestQueue(name, "echo")))
	done := make(chan error, 1)
	go func() { done <- wm.Run(ctx) }()
	<-wm.Running()
	if _, ok := wm.Handlers()[wire.RequestQueue(name, "echo")]; !ok {
		t.Error("the RPC route is not a handler of the user's router")
	}
	r, err := s.Request(ctx, name, "echo", "hi")
	if err != nil || string(r.Body) != `"hi"` {
		t.Fatalf("%v %v", r, err)
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the user's router middleware saw %d requests, want 1", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wm.Close()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// countRequests is a router middleware that counts the messages of handler name.
func countRequests(n *atomic.Int32, name string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			if message.HandlerNameFromCtx(msg.Context()) == name {
				n.Add(1)
			}
			return h(msg)
		}
	}
}

// TestOwnRouterServesRPCDirectly: with the Service's own router, RPC routes are not
// handlers of it (the request subscriber's workers run them, see Service.Router), so
// its middleware does not see them; event handlers still run on it.
func TestOwnRouterServesRPCDirectly(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-direct")
	cleanupQueues(t, url, name, "echo", "later")
	s := newService(t, url, name, router.Config{})
	var rpcSeen, eventsSeen atomic.Int32
	s.Router().AddMiddleware(countRequests(&rpcSeen, wire.RequestQueue(name, "echo")))
	s.Router().AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			eventsSeen.Add(1)
			return h(msg)
		}
	})
	if err := s.Handle("echo", echo); err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	if _, err := s.Listen(name, "evt", func(*message.Message) error { got <- struct{}{}; return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Router().Handlers()[wire.RequestQueue(name, "echo")]; ok {
		t.Error("the RPC route is a handler of the Service's own router")
	}
	r, err := s.Request(ctx, name, "echo", "hi")
	if err != nil || string(r.Body) != `"hi"` {
		t.Fatalf("%v %v", r, err)
	}
	// A route handled after Connect is served the same way.
	if err := s.Handle("later", echo); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Request(ctx, name, "later", "again"); err != nil || string(r.Body) != `"again"` {
		t.Fatalf("%v %v", r, err)
	}
	if err := s.Emit(ctx, name, "evt", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("event not received")
	}
	if n := rpcSeen.Load(); n != 0 {
		t.Errorf("the router middleware saw %d RPC requests, want 0", n)
	}
	if eventsSeen.Load() == 0 {
		t.Error("the router middleware did not see the event")
	}
}

// TestCloseReportsRouterTimeout: a router handler (here an event listener) that outlives
// Config.CloseTimeout makes Close return the router's close timeout, within about that
// timeout.
func TestCloseReportsRouterTimeout(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-close-timeout")
	s, err := router.New(name, router.Config{URL: url, CloseTimeout: 300 * time.Millisecond, DisableQoS: true})
	if err != nil {
		t.Fatal(err)
	}
	started, release, returned := make(chan struct{}), make(chan struct{}), make(chan struct{})
	if _, err := s.Listen(name, "slow", func(*message.Message) error {
		defer close(returned)
		close(started)
		<-release
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Emit(ctx, name, "slow", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("listener not called")
	}
	begin := time.Now()
	err = s.Close()
	if err == nil || !strings.Contains(err.Error(), "router close timeout") {
		t.Errorf("Close = %v, want the router's close timeout", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("Close took %v with CloseTimeout 300ms", d)
	}
	close(release)
	<-returned
}

// TestConnectRetryConsumesEveryRoute: when consuming one route fails (its queue exists
// with other arguments), Connect fails; once that is fixed, a retried Connect consumes
// every route, not only the one that failed.
func TestConnectRetryConsumesEveryRoute(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("router-retry")
	routes := []string{"bad", "a", "b", "c", "d", "e"}
	cleanupQueues(t, url, name, routes...)
	// A request queue without x-expires: declaring it with the protocol's arguments fails.
	if _, err := rawChannel(t, url).QueueDeclare(wire.RequestQueue(name, "bad"), true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	s := newService(t, url, name, router.Config{})
	for _, r := range routes {
		if err := s.Handle(r, echo); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err == nil {
		t.Fatal("Connect succeeded with a request queue declared with other arguments")
	}
	if _, err := rawChannel(t, url).QueueDelete(wire.RequestQueue(name, "bad"), false, false, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if reply, err := s.Request(ctx, name, r, r); err != nil || string(reply.Body) != `"`+r+`"` {
			t.Errorf("route %s: %v %v", r, reply, err)
		}
	}
}
