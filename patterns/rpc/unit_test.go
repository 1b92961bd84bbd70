package rpc

// Unit tests without a broker: the server handler and the client's reply dispatch on
// hand-made messages, and a round trip over Watermill's gochannel (which has the
// semantics these tests need: one subscriber per topic, metadata passed through).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/micromessaging/micromessaging/wire"
)

// recorder is a message.Publisher that keeps what it is given and can fail.
type recorder struct {
	mu   sync.Mutex
	sent []sent
	err  error
	hook func(topic string, m *message.Message)
}

type sent struct {
	topic string
	msg   *message.Message
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	for _, m := range msgs {
		r.sent = append(r.sent, sent{topic, m})
	}
	hook, err := r.hook, r.err
	r.mu.Unlock()
	if hook != nil {
		for _, m := range msgs {
			hook(topic, m)
		}
	}
	return err
}

func (r *recorder) Close() error { return nil }

func (r *recorder) all() []sent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sent)
}

// request builds a request message as a client would send it.
func request(route, body string, timeout time.Duration) *message.Message {
	m := message.NewMessage("u1", []byte(body))
	now := time.Now().UnixMilli()
	m.Metadata[wire.MetaCorrelationID] = "corr-1"
	m.Metadata[wire.MetaReplyTo] = "q.replyQueue.caller.i1"
	m.Metadata[wire.HeaderIDRequest] = "id-1"
	m.Metadata[wire.MetaMMSRoute] = route
	m.Metadata[wire.MetaMMSIAT] = strconv.FormatInt(now, 10)
	if timeout != 0 {
		m.Metadata[wire.MetaMMSEAT] = strconv.FormatInt(now+timeout.Milliseconds(), 10)
	}
	return m
}

func newTestServer(t *testing.T, pub message.Publisher, reg prometheus.Registerer) *Server {
	t.Helper()
	s, err := NewServer(ServerConfig{Service: "svc", Publisher: pub, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mmsOf(t *testing.T, m *message.Message) wire.MMS {
	t.Helper()
	mms, err := wire.MMSFromMetadata(m.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	return mms
}

func TestServerReplyFormat(t *testing.T) {
	pub := &recorder{}
	s := newTestServer(t, pub, nil)
	h := s.HandlerFunc("echo", func(ctx context.Context, req *Request) (any, error) {
		return req.Body, nil
	})
	if err := h(request("echo", `{"a":1}`, time.Minute)); err != nil {
		t.Fatal(err)
	}
	got := pub.all()
	if len(got) != 1 {
		t.Fatalf("%d replies, want 1", len(got))
	}
	r := got[0]
	if r.topic != "q.replyQueue.caller.i1" {
		t.Errorf("topic %q", r.topic)
	}
	md := r.msg.Metadata
	if md.Get(wire.MetaCorrelationID) != "corr-1" || md.Get(wire.HeaderIDRequest) != "id-1" {
		t.Errorf("correlation/idRequest not copied: %v", md)
	}
	if _, ok := md[wire.MetaReplyTo]; ok {
		t.Errorf("reply has a reply_to: %v", md)
	}
	mms := mmsOf(t, r.msg)
	if mms.IsError || !mms.IsEnd || mms.IsStream != nil || mms.Sequence == nil || *mms.Sequence != 0 {
		t.Errorf("mms %+v", mms)
	}
	if string(r.msg.Payload) != `{"a":1}` {
		t.Errorf("payload %s", r.msg.Payload)
	}
}

func TestServerStreamSequences(t *testing.T) {
	pub := &recorder{}
	s := newTestServer(t, pub, nil)
	h := s.HandlerFunc("stream", func(ctx context.Context, req *Request) (any, error) {
		for i := range 3 {
			if err := req.Write(map[string]int{"i": i}); err != nil {
				return nil, err
			}
		}
		return map[string]bool{"done": true}, nil
	})
	h(request("stream", `{}`, time.Minute))
	got := pub.all()
	if len(got) != 4 {
		t.Fatalf("%d replies, want 4", len(got))
	}
	for i, r := range got {
		mms := mmsOf(t, r.msg)
		end := i == 3
		if mms.IsStream == nil || !*mms.IsStream || mms.IsEnd != end || mms.IsError || *mms.Sequence != int64(i) {
			t.Errorf("reply %d: mms %+v seq %v", i, mms, *mms.Sequence)
		}
	}
	if string(got[3].msg.Payload) != `{"done":true}` {
		t.Errorf("end payload %s", got[3].msg.Payload)
	}
}

func TestServerErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       Handler
		want    RemoteError
		wantSeq int64
	}{
		{"coded", func(context.Context, *Request) (any, error) {
			return nil, fmt.Errorf("wrapped: %w", &RemoteError{Message: "no", CodeString: "boom", Code: 418, Info: map[string]any{"x": 1.0}})
		}, RemoteError{Message: "no", CodeString: "boom", Code: 418, Info: map[string]any{"x": 1.0}, Level: "fatal"}, 0},
		{"plain", func(context.Context, *Request) (any, error) {
			return nil, errors.New("plain failure")
		}, RemoteError{Message: "plain failure", Code: 500, Level: "fatal"}, 0},
		{"panic", func(context.Context, *Request) (any, error) {
			panic("kaboom")
		}, RemoteError{Message: "panic: kaboom", CodeString: "panic", Code: 500, Level: "fatal"}, 0},
		{"after chunks", func(_ context.Context, req *Request) (any, error) {
			req.Write(1)
			req.Write(2)
			return nil, errors.New("midway")
		}, RemoteError{Message: "midway", Code: 500, Level: "fatal"}, 2},
		{"bad body", func(_ context.Context, req *Request) (any, error) {
			var v struct{ N int }
			return nil, req.Decode(&v)
		}, RemoteError{CodeString: "badRequest", Code: 400, Level: "fatal"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := &recorder{}
			reg := prometheus.NewRegistry()
			s := newTestServer(t, pub, reg)
			s.HandlerFunc("r", tc.h)(request("r", `"not an object"`, time.Minute))
			got := pub.all()
			last := got[len(got)-1].msg
			mms := mmsOf(t, last)
			if !mms.IsError || !mms.IsEnd || *mms.Sequence != tc.wantSeq {
				t.Errorf("mms %+v seq %d", mms, *mms.Sequence)
			}
			re, err := wire.ParseErrorBody(last.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.Message == "" {
				tc.want.Message = re.Message // decoder text
			}
			if fmt.Sprint(*re) != fmt.Sprint(tc.want) {
				t.Errorf("error\n got %+v\nwant %+v", *re, tc.want)
			}
			if n := testutil.ToFloat64(s.m.requests.WithLabelValues("r", OutcomeError)); n != 1 {
				t.Errorf("error outcome counted %v times", n)
			}
		})
	}
}

func TestServerExpired(t *testing.T) {
	pub := &recorder{}
	s := newTestServer(t, pub, nil)
	ran := 0
	h := s.HandlerFunc("slow", func(ctx context.Context, req *Request) (any, error) {
		ran++
		return "late", nil
	})
	m := request("slow", `{}`, time.Minute)
	m.Metadata[wire.MetaMMSEAT] = strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10)
	h(m)
	if ran != 0 || len(pub.all()) != 0 {
		t.Errorf("expired request: handler ran %d times, %d replies", ran, len(pub.all()))
	}
	if n := testutil.ToFloat64(s.m.requests.WithLabelValues("slow", OutcomeExpired)); n != 1 {
		t.Errorf("expired counted %v", n)
	}

	// Expires while running: the handler sees the deadline in ctx, no reply goes out.
	var deadline time.Time
	h = s.HandlerFunc("slow", func(ctx context.Context, req *Request) (any, error) {
		deadline, _ = ctx.Deadline()
		<-ctx.Done()
		if err := req.Write("chunk"); !errors.Is(err, ErrExpired) {
			t.Errorf("Write after expiry: %v, want ErrExpired", err)
		}
		return "late", nil
	})
	m = request("slow", `{}`, 50*time.Millisecond)
	eat, _ := strconv.ParseInt(m.Metadata[wire.MetaMMSEAT], 10, 64)
	h(m)
	if !deadline.Equal(time.UnixMilli(eat)) {
		t.Errorf("handler deadline %v, want %v", deadline, time.UnixMilli(eat))
	}
	if len(pub.all()) != 0 {
		t.Errorf("late reply sent: %v", pub.all()[0].msg.Metadata)
	}
}

func TestServerTaskAndNoDeadline(t *testing.T) {
	pub := &recorder{}
	s := newTestServer(t, pub, nil)
	var hasDeadline, isTask bool
	h := s.HandlerFunc("work", func(ctx context.Context, req *Request) (any, error) {
		_, hasDeadline = ctx.Deadline()
		isTask = req.IsTask
		return nil, req.Write("ignored")
	})
	m := message.NewMessage("u", []byte(`{}`))
	m.Metadata[wire.MetaMMSRoute] = "work"
	m.Metadata[wire.MetaMMSIsTask] = "true"
	h(m)
	if hasDeadline || !isTask || len(pub.all()) != 0 {
		t.Errorf("task: deadline %v, isTask %v, %d replies", hasDeadline, isTask, len(pub.all()))
	}
}

// newTestClient returns a client whose publisher is pub and whose replies are fed by
// hand through HandleReply.
func newTestClient(t *testing.T, pub message.Publisher, reg prometheus.Registerer) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Service: "caller", Publisher: pub, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// reply builds a reply to req.
func reply(req *message.Message, payload string, mms wire.MMS) *message.Message {
	m := message.NewMessage("r", []byte(payload))
	m.Metadata[wire.MetaCorrelationID] = req.Metadata.Get(wire.MetaCorrelationID)
	m.Metadata[wire.HeaderIDRequest] = req.Metadata.Get(wire.HeaderIDRequest)
	mms.SetMetadata(m.Metadata)
	return m
}

func ptr[T any](v T) *T { return &v }

func TestClientRequestFormat(t *testing.T) {
	pub := &recorder{}
	c := newTestClient(t, pub, nil)
	pub.hook = func(topic string, m *message.Message) {
		go c.HandleReply(reply(m, `{"ok":true}`, wire.MMS{IsEnd: true, Sequence: ptr(int64(0))}))
	}
	r, err := c.Request(context.Background(), "svc", "echo", map[string]string{"<a>": "&"},
		WithTimeout(3*time.Second), WithHeaders(map[string]string{"h": "v", "mm.reply_to": "evil"}), WithIDRequest("fixed"))
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Body) != `{"ok":true}` || !r.End || r.Stream || r.IDRequest != "fixed" {
		t.Errorf("reply %+v", r)
	}
	req := pub.all()[0]
	md := req.msg.Metadata
	if req.topic != "q.requests.svc.echo" || md.Get(wire.MetaReplyTo) != c.ReplyQueue() ||
		md.Get(wire.MetaCorrelationID) == "" || md.Get("h") != "v" || md.Get(wire.HeaderIDRequest) != "fixed" {
		t.Errorf("request %s %v", req.topic, md)
	}
	if string(req.msg.Payload) != `{"<a>":"&"}` {
		t.Errorf("body %s", req.msg.Payload)
	}
	mms := mmsOf(t, req.msg)
	if md.Get(wire.MetaExpiration) != "3000" || mms.Route != "echo" || mms.EAT-mms.IAT != 3000 {
		t.Errorf("expiration %s mms %+v", md.Get(wire.MetaExpiration), mms)
	}
}

func TestClientStreamOrder(t *testing.T) {
	// Replies arrive shuffled, with a duplicate; chunks must come out in order.
	order := []int64{2, 0, 4, 1, 0, 3} // 4 is the end
	feed := func(c *Client) func(topic string, m *message.Message) {
		return func(_ string, m *message.Message) {
			go func() {
				for _, seq := range order {
					c.HandleReply(reply(m, fmt.Sprintf(`{"i":%d}`, seq),
						wire.MMS{IsStream: ptr(true), IsEnd: seq == 4, Sequence: ptr(seq)}))
				}
			}()
		}
	}
	t.Run("iterator", func(t *testing.T) {
		pub := &recorder{}
		c := newTestClient(t, pub, nil)
		pub.hook = feed(c)
		var got []int64
		for r, err := range c.Stream(context.Background(), "svc", "stream", nil, WithTimeout(5*time.Second)) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.Sequence)
			if r.End != (r.Sequence == 4) || !r.Stream {
				t.Errorf("reply %+v", r)
			}
		}
		if !slices.Equal(got, []int64{0, 1, 2, 3, 4}) {
			t.Errorf("sequences %v", got)
		}
	})
	t.Run("callback", func(t *testing.T) {
		pub := &recorder{}
		c := newTestClient(t, pub, nil)
		pub.hook = feed(c)
		var got []int64
		end, err := c.Request(context.Background(), "svc", "stream", nil, WithTimeout(5*time.Second),
			OnChunk(func(r *Reply) error { got = append(got, r.Sequence); return nil }))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []int64{0, 1, 2, 3}) || string(end.Body) != `{"i":4}` {
			t.Errorf("chunks %v end %s", got, end.Body)
		}
	})
	t.Run("break", func(t *testing.T) {
		pub := &recorder{}
		reg := prometheus.NewRegistry()
		c := newTestClient(t, pub, reg)
		pub.hook = feed(c)
		n := 0
		for range c.Stream(context.Background(), "svc", "stream", nil) {
			n++
			break
		}
		if n != 1 {
			t.Errorf("%d elements", n)
		}
		if v := testutil.ToFloat64(c.m.requests.WithLabelValues("stream", OutcomeCanceled)); v != 1 {
			t.Errorf("canceled outcome %v", v)
		}
	})
}

func TestClientFailures(t *testing.T) {
	t.Run("remote error", func(t *testing.T) {
		pub := &recorder{}
		c := newTestClient(t, pub, nil)
		pub.hook = func(_ string, m *message.Message) {
			body := wire.ErrorBody(&RemoteError{Message: "failed", CodeString: "boom", Code: 418, Info: map[string]int{"x": 1}})
			go c.HandleReply(reply(m, string(body), wire.MMS{IsError: true, IsEnd: true, Sequence: ptr(int64(0))}))
		}
		_, err := c.Request(context.Background(), "svc", "fail", nil)
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != 418 || re.CodeString != "boom" || re.Message != "failed" {
			t.Fatalf("got %v", err)
		}
		if info, _ := re.Info.(map[string]any); info["x"] != 1.0 {
			t.Errorf("info %#v", re.Info)
		}
		if errors.Is(err, ErrTimeout) {
			t.Error("a remote error matches ErrTimeout")
		}
	})
	t.Run("unroutable", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		pub := &recorder{err: fmt.Errorf("publish: %w", wire.ErrUnroutable)}
		c := newTestClient(t, pub, reg)
		_, err := c.Request(context.Background(), "svc", "nobody", nil)
		if !errors.Is(err, ErrUnroutable) {
			t.Fatalf("got %v", err)
		}
		if v := testutil.ToFloat64(c.m.requests.WithLabelValues("nobody", OutcomeUnroutable)); v != 1 {
			t.Errorf("unroutable outcome %v", v)
		}
	})
	t.Run("timeout and late reply", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		pub := &recorder{}
		c := newTestClient(t, pub, reg)
		_, err := c.Request(context.Background(), "svc", "slow", nil, WithTimeout(20*time.Millisecond))
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		var re *RemoteError
		if errors.As(err, &re) {
			t.Error("a timeout is a RemoteError")
		}
		c.HandleReply(reply(pub.all()[0].msg, `"late"`, wire.MMS{IsEnd: true, Sequence: ptr(int64(0))}))
		if v := testutil.ToFloat64(c.m.dropped); v != 1 {
			t.Errorf("dropped %v", v)
		}
		if v := testutil.ToFloat64(c.m.requests.WithLabelValues("slow", OutcomeTimeout)); v != 1 {
			t.Errorf("timeout outcome %v", v)
		}
		if v := testutil.ToFloat64(c.m.inFlight); v != 0 {
			t.Errorf("in flight %v", v)
		}
	})
	t.Run("ctx deadline", func(t *testing.T) {
		c := newTestClient(t, &recorder{}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := c.Request(ctx, "svc", "slow", nil, WithTimeout(time.Hour))
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		c := newTestClient(t, &recorder{}, nil)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := c.Request(ctx, "svc", "slow", nil)
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c := newTestClient(t, &recorder{}, nil)
		time.AfterFunc(20*time.Millisecond, func() { c.Close() })
		_, err := c.Request(context.Background(), "svc", "slow", nil)
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v", err)
		}
		c.Close()
	})
	t.Run("malformed reply", func(t *testing.T) {
		pub := &recorder{}
		c := newTestClient(t, pub, nil)
		pub.hook = func(_ string, m *message.Message) {
			r := reply(m, `{}`, wire.MMS{IsEnd: true})
			r.Metadata[wire.MetaMMSSequence] = "zero"
			go c.HandleReply(r)
		}
		_, err := c.Request(context.Background(), "svc", "x", nil)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("names", func(t *testing.T) {
		c := newTestClient(t, &recorder{}, nil)
		for _, tc := range [][2]string{{"", "r"}, {"s", ""}, {"a b", "r"}, {"s", "r\t"}} {
			if _, err := c.Request(context.Background(), tc[0], tc[1], nil); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%q: %v", tc, err)
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	_, err := NewClient(ClientConfig{Service: "a b", Timeout: -1})
	for _, want := range []string{"white space", "Publisher", "negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("client config error %v lacks %q", err, want)
		}
	}
	_, err = NewServer(ServerConfig{})
	for _, want := range []string{"empty", "Publisher"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("server config error %v lacks %q", err, want)
		}
	}
	// Two clients and two servers on one registry share their collectors.
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewClient(ClientConfig{Service: "a", Publisher: &recorder{}, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
		if _, err := NewServer(ServerConfig{Service: "a", Publisher: &recorder{}, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGoChannelRoundTrip runs a server and a client on one Watermill router over
// gochannel: the same wiring as over RabbitMQ, minus the broker's routing.
func TestGoChannelRoundTrip(t *testing.T) {
	ps := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, nil)
	defer ps.Close()
	r, err := message.NewRouter(message.RouterConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := newTestServer(t, ps, nil)
	cl := newTestClient(t, ps, nil)
	if _, err := srv.AddHandler(r, ps, "echo", func(ctx context.Context, req *Request) (any, error) {
		var in map[string]any
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		in["seen"] = req.Header("h")
		return in, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.AddHandler(r, ps, "echo", nil); err == nil {
		t.Error("nil handler accepted")
	}
	if _, err := cl.AddHandler(r, ps); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddHandler(r, ps); err == nil {
		t.Error("second reply handler accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rep, err := cl.Request(ctx, "svc", "echo", json.RawMessage(`{"a":1}`), WithHeaders(map[string]string{"h": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := rep.Decode(&got); err != nil || got["a"] != 1.0 || got["seen"] != "v" {
		t.Errorf("reply %s (%v)", rep.Body, err)
	}
}

// unconfirmed is a recorder that also publishes without confirms, like rabbitmq.Publisher:
// lose makes the next publish report its channel lost at once, ret makes it return.
type unconfirmed struct {
	recorder
	lose, ret int // how many of the next publishes are lost / returned
	forgotten int
}

func (u *unconfirmed) PublishUnconfirmed(topic string, msg *message.Message, onReturn func()) (<-chan struct{}, func(), error) {
	u.mu.Lock()
	lose, ret := u.lose > 0, u.lose == 0 && u.ret > 0
	if lose {
		u.lose--
	} else if ret {
		u.ret--
	}
	u.mu.Unlock()
	lost := make(chan struct{})
	forget := func() { u.mu.Lock(); u.forgotten++; u.mu.Unlock() }
	switch {
	case lose: // written on a channel that died: nothing reaches the "server"
		u.mu.Lock()
		u.sent = append(u.sent, sent{topic, msg})
		u.mu.Unlock()
		close(lost)
	case ret:
		u.mu.Lock()
		u.sent = append(u.sent, sent{topic, msg})
		u.mu.Unlock()
		go onReturn()
	default:
		if err := u.Publish(topic, msg); err != nil {
			return nil, nil, err
		}
	}
	return lost, forget, nil
}

func TestClientUnconfirmedPublisher(t *testing.T) {
	pub := &unconfirmed{lose: 1}
	c := newTestClient(t, pub, nil)
	pub.hook = func(topic string, m *message.Message) {
		go c.HandleReply(reply(m, `{"ok":true}`, wire.MMS{IsEnd: true, Sequence: ptr(int64(0))}))
	}
	// The first publish is lost with its channel: the request goes out again.
	r, err := c.Request(context.Background(), "svc", "echo", nil, WithTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Body) != `{"ok":true}` {
		t.Errorf("reply %s", r.Body)
	}
	if n := len(pub.all()); n != 2 {
		t.Errorf("%d publishes, want 2 (the lost one again)", n)
	}
	// A returned request fails at once with ErrUnroutable.
	pub.ret = 1
	start := time.Now()
	if _, err := c.Request(context.Background(), "svc", "nobody", nil, WithTimeout(5*time.Second)); !errors.Is(err, ErrUnroutable) {
		t.Fatalf("err = %v, want ErrUnroutable", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("unroutable took %v", d)
	}
	pub.mu.Lock()
	defer pub.mu.Unlock()
	if pub.forgotten != 3 {
		t.Errorf("forget called %d times, want 3 (once per publish: the lost one, its retry, the returned one)", pub.forgotten)
	}
}

func TestNewIDIsUUIDv4(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s := newID()
		u, err := uuid.Parse(s)
		if err != nil {
			t.Fatalf("newID() = %q: %v", s, err)
		}
		if u.Version() != 4 || u.Variant() != uuid.RFC4122 || u.String() != s {
			t.Fatalf("newID() = %q: version %d, variant %v", s, u.Version(), u.Variant())
		}
		if seen[s] {
			t.Fatalf("newID() repeated %q", s)
		}
		seen[s] = true
	}
}

func TestClientStreamRearmsTimeout(t *testing.T) {
	// Chunks every 250 ms for 1.25 s with an 800 ms timeout: each chunk re-arms it, so the
	// call outlives its first deadline; then the stream stalls and the call times out.
	pub := &recorder{}
	c := newTestClient(t, pub, nil)
	pub.hook = func(_ string, m *message.Message) {
		go func() {
			for seq := range int64(5) {
				time.Sleep(250 * time.Millisecond)
				c.HandleReply(reply(m, `{}`, wire.MMS{IsStream: ptr(true), Sequence: ptr(seq)}))
			}
		}()
	}
	n := 0
	_, err := c.Request(context.Background(), "svc", "stream", nil, WithTimeout(800*time.Millisecond),
		OnChunk(func(*Reply) error { n++; return nil }))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v", err)
	}
	if n != 5 {
		t.Errorf("%d chunks before the timeout, want 5", n)
	}
}
