package rpc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/micromessaging/micromessaging/internal/testbroker"
)

// BenchmarkBrokerRoundTrip: Client.Request -> RabbitMQ -> Server -> RabbitMQ -> Client
// through rabbitmq.Publisher/Subscriber and a Watermill router (no router.Service
// facade), with c concurrent callers and a 256-byte body. It reports round trips/s and
// the CPU time of the whole process (both sides) per round trip, which is steadier than
// the rate on a shared machine.
func BenchmarkBrokerRoundTrip(b *testing.B) {
	url := testbroker.URL(b)
	for _, c := range []int{1, 16} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			svc := testbroker.Name("rpc-bench")
			n := newNode(b, url, svc)
			n.handle(b, url, "echo", echo)
			body := json.RawMessage(`"` + strings.Repeat("x", 254) + `"`)
			call := func() error {
				_, err := n.client.Request(context.Background(), svc, "echo", body)
				return err
			}
			run := func(total int) error {
				var wg sync.WaitGroup
				errs := make(chan error, c)
				for w := range c {
					count := total / c
					if w < total%c {
						count++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range count {
							if err := call(); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				return <-errs
			}
			if err := run(20 * c); err != nil { // warm-up
				b.Fatal(err)
			}
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			if err := run(b.N); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/call")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
