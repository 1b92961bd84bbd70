package rabbitmq_test

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// TestBrokerRestart stops and starts the broker application (rabbitmqctl stop_app,
// start_app) while messages are published and consumed: both sides reconnect by
// themselves and every confirmed persistent message, including those published before
// the restart, is consumed. It disturbs every user of the broker, so it runs only with
// MM_TEST_BROKER_RESTART=1 (CI and `make test` set it).
func TestBrokerRestart(t *testing.T) {
	if os.Getenv("MM_TEST_BROKER_RESTART") != "1" {
		t.Skip("stops and starts the shared broker: set MM_TEST_BROKER_RESTART=1 to run it")
	}
	testbroker.URL(t)
	q := testbroker.Name("mmtest.restart")        // consumed through the restart
	kept := testbroker.Name("mmtest.restartkept") // filled before, consumed after it
	pubConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: testbroker.Name("mmtest.restartpub"),
		BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second})
	subConn := connectCfg(t, rabbitmq.ConnectionConfig{Name: testbroker.Name("mmtest.restartsub"),
		BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second})
	pubStates := watchStates(t, pubConn)
	subStates := watchStates(t, subConn)
	pub := newPublisher(t, pubConn, rabbitmq.PublisherConfig{Marshaler: wire.Codec{Persistent: true}, Mandatory: true})
	sub := newSubscriber(t, subConn, rabbitmq.SubscriberConfig{Prefetch: 20})
	for _, name := range []string{q, kept} {
		if err := sub.SubscribeInitialize(name); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		adm := newAdmin(t)
		for _, name := range []string{q, kept} {
			if _, err := adm.channel().QueueDelete(name, false, false, false); err != nil {
				t.Logf("delete %s: %v", name, err)
			}
		}
	})

	var keptMsgs sync.Map
	// Persistent messages published before the restart must survive it.
	for range 100 {
		m := newMsg(`"before"`)
		if err := pub.Publish(kept, m); err != nil {
			t.Fatal(err)
		}
		keptMsgs.Store(m.UUID, true)
	}
	var confirmed sync.Map
	var mu sync.Mutex
	consumed := map[string]bool{}
	msgs, err := sub.Subscribe(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var consumer sync.WaitGroup
	consumer.Add(1)
	go func() {
		defer consumer.Done()
		for m := range msgs {
			if m == nil {
				t.Error("nil message")
				return
			}
			mu.Lock()
			consumed[m.UUID] = true
			mu.Unlock()
			m.Ack()
		}
	}()

	stopBroker := func() {
		if out, err := exec.Command("rabbitmqctl", "stop_app").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl stop_app: %v: %s", err, out)
		}
	}
	startBroker := func() error {
		out, err := exec.Command("rabbitmqctl", "start_app").CombinedOutput()
		if err != nil {
			t.Errorf("rabbitmqctl start_app: %v: %s", err, out)
		}
		return err
	}
	var restarted atomic.Bool
	t.Cleanup(func() { // never leave the broker stopped
		if !restarted.Load() {
			_ = startBroker()
		}
	})

	// Publishers run through the restart; each Publish waits for the connection.
	var wg sync.WaitGroup
	var failed atomic.Int32
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopPublishers := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	t.Cleanup(stopPublishers)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m := newMsg(`"during"`)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				m.SetContext(ctx)
				err := pub.Publish(q, m)
				cancel()
				if err == nil {
					confirmed.Store(m.UUID, true)
				} else {
					failed.Add(1)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	time.Sleep(500 * time.Millisecond)
	stopBroker()
	time.Sleep(time.Second)
	if err := startBroker(); err != nil {
		t.FailNow()
	}
	restarted.Store(true)
	waitFor(t, 60*time.Second, "both connections back", func() bool {
		return pubStates.sawLossAndRecovery() && subStates.sawLossAndRecovery()
	})
	time.Sleep(time.Second) // publish some more after the restart
	stopPublishers()
	if n := failed.Load(); n > 0 {
		t.Logf("%d publishes failed (the broker refused them while starting); they were not counted", n)
	}

	var want []string
	confirmed.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	waitFor(t, 60*time.Second, "every message confirmed during the restart consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range want {
			if !consumed[id] {
				return false
			}
		}
		return true
	})
	keptCh, err := sub.Subscribe(context.Background(), kept)
	if err != nil {
		t.Fatal(err)
	}
	for left := 100; left > 0; {
		select {
		case m := <-keptCh:
			m.Ack()
			if keptMsgs.CompareAndDelete(m.UUID, true) {
				left--
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of the 100 messages published before the restart are gone", left)
		}
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	consumer.Wait()
	t.Logf("%d messages confirmed around the restart and 100 from before it consumed", len(want))
}
