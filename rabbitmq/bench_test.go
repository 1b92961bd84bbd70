package rabbitmq_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// Benchmarks of the library against raw amqp091-go on the same broker, in one run:
//
//	go test -run '^$' -bench . -benchtime 20000x ./rabbitmq/
//
// Each reports msgs/s (b.N messages of 256 bytes, persistent, to a durable queue).
// Publish: library Publish from C goroutines with confirms vs one raw channel with up to
// 1000 unconfirmed publishes (async confirms). Consume: a message.Router handler that
// returns nil (the router acks) with Prefetch 100 vs a raw consumer with prefetch 100
// and Ack(multiple) every 50 deliveries.

const benchSize = 256

func benchQueue(b *testing.B) (*admin, string) {
	adm := newAdmin(b)
	q := testbroker.Name("mmtest.bench")
	if _, err := adm.channel().QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	adm.deleteLater(q)
	return adm, q
}

// cpuTime is the CPU time (user+system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportRate reports msgs/s and the client CPU time per message (cpu0: cpuTime() when
// the clock started).
func reportRate(b *testing.B, elapsed time.Duration, cpu0 time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPublish: c goroutines each calling Publish with batch messages at a time
// (at most c*batch messages in flight).
func BenchmarkPublish(b *testing.B) {
	for _, tc := range []struct{ c, batch int }{{16, 1}, {64, 1}, {256, 1}, {1024, 1}, {4, 64}, {16, 64}} {
		name := fmt.Sprintf("c=%d", tc.c)
		if tc.batch > 1 {
			name += fmt.Sprintf(",batch=%d", tc.batch)
		}
		b.Run(name, func(b *testing.B) {
			_, q := benchQueue(b)
			conn := connect(b, testbroker.Name("mmtest.benchpub"))
			pub := newPublisher(b, conn, rabbitmq.PublisherConfig{Marshaler: wire.Codec{Persistent: true}})
			payload := make([]byte, benchSize)
			if err := pub.Publish(q, newMsg("warm-up")); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, tc.c)
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			for range tc.c {
				wg.Add(1)
				go func() {
					defer wg.Done()
					msgs := make([]*message.Message, 0, tc.batch)
					for {
						msgs = msgs[:0]
						for len(msgs) < tc.batch && next.Add(1) <= int64(b.N) {
							msgs = append(msgs, message.NewMessage(watermill.NewUUID(), payload))
						}
						if len(msgs) == 0 {
							return
						}
						if err := pub.Publish(q, msgs...); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			reportRate(b, elapsed, cpu0)
		})
	}
}

// rawPublishConfirmed publishes n persistent messages on ch (in confirm mode) with at most
// window unconfirmed, and returns when all are confirmed.
func rawPublishConfirmed(ch *amqp.Channel, queue string, n, window int, body []byte) error {
	p := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: wire.ContentType, Body: body}
	return rawPublishConfirmedMsg(ch, queue, n, window, p)
}

func rawPublishConfirmedMsg(ch *amqp.Channel, queue string, n, window int, p amqp.Publishing) error {
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, window))
	credits := make(chan struct{}, window)
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, ok := <-confirms
			if !ok {
				done <- fmt.Errorf("channel closed after %d confirms", i)
				return
			}
			if !c.Ack {
				done <- fmt.Errorf("publish %d nacked", c.DeliveryTag)
				return
			}
			<-credits
		}
		done <- nil
	}()
	for i := 0; i < n; i++ {
		select {
		case credits <- struct{}{}:
		case err := <-done:
			return err
		}
		if err := ch.PublishWithContext(context.Background(), "", queue, false, false, p); err != nil {
			return err
		}
	}
	return <-done
}

// BenchmarkRawPublish: window=1000 is the yardstick (bench-baseline's raw-publish); the
// smaller windows match the Publish concurrency levels (at most C messages in flight).
// wire=true sends the message as the wire codec encodes it (__mms header, message id),
// which is what the library sends.
func BenchmarkRawPublish(b *testing.B) {
	for _, tc := range []struct {
		window int
		wire   bool
	}{{1000, false}, {1000, true}, {256, false}, {64, false}, {16, false}} {
		window := tc.window
		name := fmt.Sprintf("window=%d", window)
		if tc.wire {
			name += ",wire=true"
		}
		b.Run(name, func(b *testing.B) {
			_, q := benchQueue(b)
			conn, err := amqp.Dial(testbroker.URL(b))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				b.Fatal(err)
			}
			p := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: wire.ContentType, Body: make([]byte, benchSize)}
			if tc.wire {
				if p, err = (wire.Codec{Persistent: true}).Marshal(message.NewMessage(watermill.NewUUID(), make([]byte, benchSize))); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			if err := rawPublishConfirmedMsg(ch, q, b.N, window, p); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportRate(b, elapsed, cpu0)
		})
	}
}

// prefill puts n persistent messages (as the wire codec sends them) in a fresh queue.
func prefill(b *testing.B, n int) string {
	adm, q := benchQueue(b)
	ch, err := adm.conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := rawPublishConfirmed(ch, q, n, 1000, make([]byte, benchSize)); err != nil {
		b.Fatal(err)
	}
	return q
}

func BenchmarkConsumeRouter(b *testing.B) {
	q := prefill(b, b.N)
	conn := connect(b, testbroker.Name("mmtest.benchsub"))
	sub := newSubscriber(b, conn, rabbitmq.SubscriberConfig{Prefetch: 100})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	router.AddConsumerHandler("bench", q, sub, func(*message.Message) error {
		if handled.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	})
	runErr := make(chan error, 1)
	b.ResetTimer()
	cpu0, start := cpuTime(), time.Now()
	go func() { runErr <- router.Run(context.Background()) }()
	select {
	case <-done:
	case err := <-runErr:
		b.Fatalf("router stopped: %v", err)
	case <-time.After(5 * time.Minute):
		b.Fatalf("handled %d of %d", handled.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if err := router.Close(); err != nil {
		b.Fatal(err)
	}
	if err := <-runErr; err != nil {
		b.Fatal(err)
	}
	reportRate(b, elapsed, cpu0)
}

func BenchmarkRawConsume(b *testing.B) {
	q := prefill(b, b.N)
	conn, err := amqp.Dial(testbroker.URL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(100, 0, false); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0, start := cpuTime(), time.Now()
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= b.N; i++ {
		d, ok := <-deliveries
		if !ok {
			b.Fatalf("consumer closed after %d", i-1)
		}
		if i%50 == 0 || i == b.N {
			if err := d.Ack(true); err != nil {
				b.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportRate(b, elapsed, cpu0)
}
