package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

// TestHandle runs handlers on Handle's workers: as many at once as the prefetch
// allows, a nil error acks, an error or a panic nacks (the message comes back), and
// done closes when the ctx ends.
func TestHandle(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.handle")
	adm.deleteLater(q)
	conn := connect(t, testbroker.Name("mmtest.handle"))
	reg := prometheus.NewRegistry()
	const prefetch = 4
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: prefetch, NackDelay: 20 * time.Millisecond,
		Registerer: reg, Name: "handle", Queue: queueNamed(rabbitmq.Queue{Name: q})})

	var running, peak atomic.Int32
	release := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]int{} // payload -> runs
	done := map[string]bool{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handled, err := sub.Handle(ctx, q, func(m *message.Message) error {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		p := string(m.Payload)
		mu.Lock()
		seen[p]++
		runs := seen[p]
		mu.Unlock()
		<-release
		switch {
		case p == "fail" && runs == 1:
			return errors.New("first attempt fails")
		case p == "panic" && runs == 1:
			panic("first attempt panics")
		}
		mu.Lock()
		done[p] = true
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Handle(ctx, q, nil); err == nil {
		t.Fatal("nil handler accepted")
	}
	noAck := newSubscriber(t, conn, rabbitmq.SubscriberConfig{NoAck: true})
	if _, err := noAck.Handle(ctx, q, func(*message.Message) error { return nil }); err == nil {
		t.Fatal("Handle on a NoAck subscriber accepted")
	}

	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
	payloads := []string{"fail", "panic", "0", "1", "2", "3", "4", "5"}
	for _, p := range payloads {
		if err := pub.Publish(q, newMsg(p)); err != nil {
			t.Fatal(err)
		}
	}
	// The prefetch bounds the handlers in flight; the others wait in the broker.
	waitFor(t, 10*time.Second, "prefetch handlers to run", func() bool { return running.Load() == prefetch })
	waitFor(t, 10*time.Second, "the others to wait in the queue", func() bool {
		n, _ := adm.depth(q)
		return n == len(payloads)-prefetch
	})
	close(release)
	waitFor(t, 10*time.Second, "every message to be handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == len(payloads)
	})
	waitFor(t, 10*time.Second, "the queue to be empty and the acks sent", func() bool {
		n, _ := adm.depth(q)
		return n == 0 && metricValue(t, reg, "micromessaging_rabbitmq_acked_total", "subscriber", "handle") == float64(len(payloads))
	})
	if got := peak.Load(); got != prefetch {
		t.Errorf("peak concurrency %d, want the prefetch %d", got, prefetch)
	}
	mu.Lock()
	if seen["fail"] != 2 || seen["panic"] != 2 {
		t.Errorf("runs: fail %d, panic %d; want 2 each (nacked, then redelivered)", seen["fail"], seen["panic"])
	}
	mu.Unlock()
	if got := metricValue(t, reg, "micromessaging_rabbitmq_nacked_total", "subscriber", "handle"); got != 2 {
		t.Errorf("nacked_total %v, want 2", got)
	}

	cancel()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("done not closed after the ctx ended")
	}
	_, consumers := adm.depth(q)
	if consumers != 0 {
		t.Errorf("%d consumers after the end", consumers)
	}
}

// TestHandleChannelLost: when the connection is lost, the message in a handler is
// given up (its ctx is cancelled, its late result ignored) and the broker redelivers
// it to the resumed subscription.
func TestHandleChannelLost(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.handle.lost")
	adm.deleteLater(q)
	name := testbroker.Name("mmtest.handle.lost")
	conn := connect(t, name)
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Queue: queueNamed(rabbitmq.Queue{Name: q})})

	var runs atomic.Int32
	cancelled := make(chan struct{})
	finish := make(chan struct{})
	second := make(chan struct{})
	_, err := sub.Handle(context.Background(), q, func(m *message.Message) error {
		if runs.Add(1) == 1 {
			<-m.Context().Done()
			close(cancelled)
			<-finish // returns late, on a dead channel
			return nil
		}
		close(second)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
	if err := pub.Publish(q, newMsg("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the handler to run", func() bool { return runs.Load() == 1 })
	if n := closeConnections(t, name); n == 0 {
		t.Fatal("no connection to close")
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's ctx was not cancelled when its channel was lost")
	}
	select {
	case <-second:
	case <-time.After(20 * time.Second):
		t.Fatal("the message was not redelivered after the connection came back")
	}
	close(finish)
	waitFor(t, 10*time.Second, "the queue to be empty", func() bool {
		n, _ := adm.depth(q)
		return n == 0
	})
	if got := runs.Load(); got != 2 {
		t.Errorf("handler ran %d times, want 2", got)
	}
}

// TestHandleClose: Close waits for handlers in flight (their messages are acked),
// up to CloseTimeout; a handler that outlives it has its message returned to the queue,
// unless it acked the message itself before.
func TestHandleClose(t *testing.T) {
	for _, tc := range []struct {
		slow, ackFirst bool
	}{{false, false}, {true, false}, {true, true}} {
		slow, ackFirst := tc.slow, tc.ackFirst
		t.Run(fmt.Sprintf("slow=%v,ackFirst=%v", slow, ackFirst), func(t *testing.T) {
			adm := newAdmin(t)
			q := testbroker.Name("mmtest.handle.close")
			adm.deleteLater(q)
			conn := connect(t, testbroker.Name("mmtest.handle.close"))
			sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{CloseTimeout: 300 * time.Millisecond,
				Queue: queueNamed(rabbitmq.Queue{Name: q})})
			started := make(chan struct{})
			release := make(chan struct{})
			returned := make(chan struct{})
			_, err := sub.Handle(context.Background(), q, func(m *message.Message) error {
				defer close(returned)
				if ackFirst {
					m.Ack()
				}
				close(started)
				if slow {
					<-release
				} else {
					time.Sleep(50 * time.Millisecond)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			pub := newPublisher(t, conn, rabbitmq.PublisherConfig{})
			if err := pub.Publish(q, newMsg("x")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("handler not started")
			}
			closed := make(chan struct{})
			go func() {
				_ = sub.Close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not return")
			}
			want := 0
			if slow && !ackFirst {
				want = 1 // given up at the close timeout: back in the queue
			}
			waitFor(t, 10*time.Second, fmt.Sprintf("%d message(s) in the queue", want), func() bool {
				n, _ := adm.depth(q)
				return n == want
			})
			close(release)
			<-returned
		})
	}
}

// TestHandleFlowControl: SetPrefetch and Pause apply to Handle subscriptions too. A
// prefetch decrease holds new deliveries until the workers settled enough messages;
// while paused nothing new runs, and Resume brings the rest.
func TestHandleFlowControl(t *testing.T) {
	const n = 20
	_, q := prefilled(t, n)
	conn := connect(t, testbroker.Name("mmtest.handle.flow"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{Prefetch: 4})
	var running, handled atomic.Int32
	gate := make(chan struct{})
	_, err := sub.Handle(context.Background(), q, func(m *message.Message) error {
		running.Add(1)
		defer running.Add(-1)
		<-gate
		handled.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "4 handlers to run", func() bool { return running.Load() == 4 })
	if err := sub.SetPrefetch(1); err != nil {
		t.Fatal(err)
	}
	// Let the four finish one at a time: nothing new may start until all four settled.
	for i := range 3 {
		gate <- struct{}{}
		waitFor(t, 10*time.Second, "a handler to finish", func() bool { return handled.Load() == int32(i+1) })
	}
	time.Sleep(300 * time.Millisecond)
	if r := running.Load(); r != 1 {
		t.Fatalf("%d handlers running while 1 of the old 4 is in flight, want 1", r)
	}
	if err := sub.Pause(); err != nil {
		t.Fatal(err)
	}
	gate <- struct{}{}
	waitFor(t, 10*time.Second, "the last of the four to finish", func() bool { return handled.Load() == 4 })
	time.Sleep(300 * time.Millisecond)
	if r := running.Load(); r != 0 {
		t.Fatalf("%d handlers running while paused", r)
	}
	if err := sub.Resume(); err != nil {
		t.Fatal(err)
	}
	for handled.Load() < n {
		select {
		case gate <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Fatalf("handled %d of %d", handled.Load(), n)
		}
		if r := running.Load(); r > 1 {
			t.Fatalf("%d handlers running with prefetch 1", r)
		}
	}
}

// TestCloseTwiceWaits: a Close called while another runs returns when the Subscriber is
// closed, not at once (Watermill's router closes its handlers' subscribers itself, so
// an owner's own Close is often the second one).
func TestCloseTwiceWaits(t *testing.T) {
	adm := newAdmin(t)
	q := testbroker.Name("mmtest.close2")
	adm.deleteLater(q)
	conn := connect(t, testbroker.Name("mmtest.close2"))
	sub := newSubscriber(t, conn, rabbitmq.SubscriberConfig{CloseTimeout: 10 * time.Second,
		Queue: queueNamed(rabbitmq.Queue{Name: q})})
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	if _, err := sub.Handle(context.Background(), q, func(*message.Message) error {
		close(started)
		<-release
		finished.Store(true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := newPublisher(t, conn, rabbitmq.PublisherConfig{}).Publish(q, newMsg("x")); err != nil {
		t.Fatal(err)
	}
	<-started
	first := make(chan struct{})
	go func() { _ = sub.Close(); close(first) }()
	time.Sleep(100 * time.Millisecond) // the first Close is under way
	time.AfterFunc(300*time.Millisecond, func() { close(release) })
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Error("the second Close returned while a handler still held its message")
	}
	<-first
	waitFor(t, 10*time.Second, "the queue to be empty (the message acked)", func() bool {
		n, _ := adm.depth(q)
		return n == 0
	})
}
