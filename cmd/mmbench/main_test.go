package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/micromessaging/micromessaging/internal/testbroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	for _, tt := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0, 1}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("percentile(1..100µs, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestPayloadIsJSONOfExactSize(t *testing.T) {
	for _, size := range []int{0, 1, 2, 3, 256, 4096} {
		b := payload(size)
		if len(b) != size {
			t.Errorf("payload(%d) has %d bytes", size, len(b))
		}
		if size > 0 && !json.Valid(b) {
			t.Errorf("payload(%d) = %q is not JSON", size, b)
		}
	}
}

func TestCompareLines(t *testing.T) {
	in := `# a comment
{"scenario":"raw-rpc","n":100,"size":256,"concurrency":16,"seconds":1,"msgs_per_sec":1000,"p50_us":100,"p99_us":400}
{"scenario":"rpc","n":100,"size":256,"concurrency":16,"seconds":1.25,"msgs_per_sec":800,"p50_us":110,"p99_us":500}
`
	got, err := compareLines(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := "# ratio rpc c=16 msgs_per_sec=0.80 p99=1.25 p50=1.10"
	if !strings.HasPrefix(got, want) {
		t.Errorf("compareLines = %q, want prefix %q", got, want)
	}

	noLatency := `{"scenario":"raw-publish","concurrency":1,"msgs_per_sec":1000}
{"scenario":"publish","concurrency":1,"msgs_per_sec":950}`
	got, err = compareLines(strings.NewReader(noLatency))
	if err != nil {
		t.Fatal(err)
	}
	if want := "# ratio publish c=1 msgs_per_sec=0.95 p99=-"; !strings.HasPrefix(got, want) {
		t.Errorf("compareLines = %q, want prefix %q", got, want)
	}

	if _, err := compareLines(strings.NewReader(`{"scenario":"x"}`)); err == nil {
		t.Error("compareLines with one line: no error")
	}
	if _, err := compareLines(strings.NewReader("not json\n{}\n")); err == nil {
		t.Error("compareLines with a non-JSON line: no error")
	}
}

func TestMeasureCallsReportsTheCauseNotTheCancellations(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	_, _, err := measureCalls(context.Background(), 1, 10, 2, func(ctx context.Context) error {
		calls++
		if calls == 5 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}

	elapsed, lats, err := measureCalls(context.Background(), 3, 10, 1, func(ctx context.Context) error { return nil })
	if err != nil || len(lats) != 10 || elapsed <= 0 {
		t.Fatalf("measureCalls(3, 10) = %v, %d latencies, %v; want 10 latencies", elapsed, len(lats), err)
	}
}

// TestScenarios runs this file set's scenarios with a small n against the broker and
// checks that each produced a timing and deleted its queues.
func TestScenarios(t *testing.T) {
	url := testbroker.URL(t)
	names := scenarioNames()
	for _, name := range []string{"raw-publish", "raw-consume", "raw-rpc", "publish", "consume"} {
		found := false
		for _, n := range names {
			found = found || n == name
		}
		if !found {
			t.Errorf("scenario %s is not registered (have %v)", name, names)
			continue
		}
		for _, c := range []int{1, 4} {
			cfg := config{url: url, n: 200, size: 64, c: c, extra: map[string]string{}}
			t.Run(fmt.Sprintf("%s/c=%d", name, c), func(t *testing.T) {
				createdMu.Lock()
				createdQueues = nil
				createdMu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				scenariosMu.Lock()
				fn := scenarios[name]
				scenariosMu.Unlock()
				res, err := fn(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				if res.Seconds <= 0 || res.Opts == "" {
					t.Errorf("result %+v: want Seconds > 0 and Opts", res)
				}
				if strings.Contains(name, "rpc") && (res.P50us <= 0 || res.P99us < res.P50us) {
					t.Errorf("result %+v: want 0 < p50 <= p99", res)
				}
				assertQueuesDeleted(t, url)
			})
		}
	}
}

func assertQueuesDeleted(t *testing.T, url string) {
	t.Helper()
	createdMu.Lock()
	queues := append([]string(nil), createdQueues...)
	createdMu.Unlock()
	if len(queues) == 0 {
		t.Error("the scenario named no queue with queueName")
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range queues {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_, err = ch.QueueDeclarePassive(q, false, false, false, false, nil)
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			t.Errorf("queue %s still exists after the run (passive declare: %v)", q, err)
			ch.Close()
		}
	}
}

// A connection that dies under a publishing run must end the run with an error at once,
// not leave the publishers waiting for confirms until the scenario's deadline.
func TestPublishConfirmedFailsFastWhenTheConnectionDies(t *testing.T) {
	url := testbroker.URL(t)
	conn, ch, err := dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := queueName("test.dies")
	if _, err := ch.QueueDeclare(q, false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	time.AfterFunc(300*time.Millisecond, func() { conn.Close() })
	start := time.Now()
	err = publishConfirmed(ctx, ch, q, 100_000_000, 4, payload(16), 1000)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publishConfirmed after the connection closed: err = %v, want a channel error", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("publishConfirmed took %v to notice the closed connection", d)
	}
}
