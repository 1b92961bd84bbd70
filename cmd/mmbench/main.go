// Command mmbench measures micromessaging against plain amqp091-go on the same broker and
// prints one JSON line per run in the format of ../shared/bench-baseline:
//
//	go run ./cmd/mmbench -scenario NAME [-n N] [-size BYTES] [-c CONCURRENCY] [-url URL] [-prefetch P] [-opt k=v]...
//	go run ./cmd/mmbench -list            # registered scenarios, one per line
//	go run ./cmd/mmbench -info            # the broker's product and version
//	mmbench ... | mmbench -compare        # two JSON lines (raw, then library) -> a ratio line
//
// Library scenarios (publish, consume, rpc, ...) have raw amqp091-go twins (raw-publish,
// raw-consume, raw-rpc, ...) that do the same work on the wire; scripts/bench.sh runs each
// pair back to back and prints the ratio. Each scenario lives in its own file and registers
// itself from init() with register(name, fn); this file has no scenario list of its own.
//
// Queues are named mmbench.<scenario>.<uuid> and deleted afterwards.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// config is what every scenario gets from the command line.
type config struct {
	url      string
	n        int               // messages or round trips in total (timed)
	size     int               // payload bytes
	c        int               // concurrency: publishers, callers, handlers
	prefetch int               // consumer prefetch; 0 = the scenario's default
	extra    map[string]string // -opt k=v, scenario specific
}

// optInt returns the integer -opt key=value, or def when absent.
func (c config) optInt(key string, def int) (int, error) {
	v, ok := c.extra[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("-opt %s=%s: %w", key, v, err)
	}
	return n, nil
}

// result is one JSON line. main fills Scenario, N, Size, Concurrency (unless the scenario
// set it) and MsgsPerSec (n/seconds); a scenario returns Seconds, P50us/P99us for round
// trips, and Opts (the settings in force).
type result struct {
	Scenario    string  `json:"scenario"`
	N           int     `json:"n"`
	Size        int     `json:"size"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	MsgsPerSec  float64 `json:"msgs_per_sec"`
	P50us       float64 `json:"p50_us,omitempty"`
	P99us       float64 `json:"p99_us,omitempty"`
	Opts        string  `json:"opts,omitempty"`
}

type scenarioFunc func(ctx context.Context, cfg config) (result, error)

var (
	scenariosMu sync.Mutex
	scenarios   = map[string]scenarioFunc{}
)

// register adds a scenario; call it from init() in the scenario's file. A duplicate name
// is a programming error and panics at start-up.
func register(name string, fn scenarioFunc) {
	scenariosMu.Lock()
	defer scenariosMu.Unlock()
	if _, dup := scenarios[name]; dup {
		panic("mmbench: scenario registered twice: " + name)
	}
	scenarios[name] = fn
}

func scenarioNames() []string {
	scenariosMu.Lock()
	defer scenariosMu.Unlock()
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// scenarioTimeout bounds a whole run so that a broken scenario fails instead of hanging.
const scenarioTimeout = 5 * time.Minute

type optFlag map[string]string

func (o optFlag) String() string { return "" }
func (o optFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	o[k] = v
	return nil
}

func defaultURL() string {
	if u := os.Getenv("RABBIT_URI"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func main() {
	os.Exit(run())
}

func run() int {
	cfg := config{extra: map[string]string{}}
	name := flag.String("scenario", "", "scenario to run (see -list)")
	flag.StringVar(&cfg.url, "url", defaultURL(), "AMQP URL (default $RABBIT_URI or the local broker)")
	flag.IntVar(&cfg.n, "n", 20000, "messages (or round trips) in total")
	flag.IntVar(&cfg.size, "size", 256, "payload bytes")
	flag.IntVar(&cfg.c, "c", 1, "concurrency: publishers / RPC callers")
	flag.IntVar(&cfg.prefetch, "prefetch", 0, "consumer prefetch (0: the scenario's default, 100 for consumers)")
	flag.Var(optFlag(cfg.extra), "opt", "scenario option key=value (repeatable), e.g. -opt window=1000")
	list := flag.Bool("list", false, "print the registered scenarios, one per line, and exit")
	info := flag.Bool("info", false, "print the broker's product and version and exit")
	compare := flag.Bool("compare", false, "read two result lines (raw first, then library) on stdin and print their ratio line")
	note := flag.String("note", "", "-compare: text appended to the ratio line")
	flag.Parse()

	switch {
	case *list:
		for _, n := range scenarioNames() {
			fmt.Println(n)
		}
		return 0
	case *compare:
		line, err := compareLines(os.Stdin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mmbench -compare:", err)
			return 1
		}
		if *note != "" {
			line += " " + *note
		}
		fmt.Println(line)
		return 0
	case *info:
		conn, err := amqp.DialConfig(cfg.url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
		if err != nil {
			fmt.Fprintln(os.Stderr, "mmbench:", err)
			return 1
		}
		defer conn.Close()
		fmt.Printf("broker=%v-%v gomaxprocs=%d\n", conn.Properties["product"], conn.Properties["version"], runtime.GOMAXPROCS(0))
		return 0
	}

	scenariosMu.Lock()
	fn, ok := scenarios[*name]
	scenariosMu.Unlock()
	if !ok || cfg.n < 1 || cfg.c < 1 || cfg.size < 0 || cfg.prefetch < 0 {
		fmt.Fprintf(os.Stderr, "mmbench: need -scenario one of: %s; n, c >= 1; size, prefetch >= 0\n",
			strings.Join(scenarioNames(), ", "))
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, scenarioTimeout)
	defer cancel()

	res, err := fn(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mmbench: %s: %v\n", *name, err)
		return 1
	}
	res.Scenario, res.N, res.Size = *name, cfg.n, cfg.size
	if res.Concurrency == 0 {
		res.Concurrency = cfg.c
	}
	res.Seconds = round(res.Seconds, 4)
	if res.Seconds > 0 {
		res.MsgsPerSec = round(float64(cfg.n)/res.Seconds, 0)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "mmbench:", err)
		return 1
	}
	return 0
}

// compareLines reads two result lines (the raw baseline first, then the library run) and
// returns "# ratio <library scenario> c=<C> msgs_per_sec=<lib/raw> p99=<lib/raw>"
// (p50 too when both have one; "-" where a ratio cannot be formed).
func compareLines(in io.Reader) (string, error) {
	var rs []result
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return "", fmt.Errorf("not a result line: %q: %w", line, err)
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(rs) != 2 {
		return "", fmt.Errorf("want 2 result lines (raw, library), got %d", len(rs))
	}
	raw, lib := rs[0], rs[1]
	ratio := func(l, r float64) string {
		if l <= 0 || r <= 0 {
			return "-"
		}
		return strconv.FormatFloat(l/r, 'f', 2, 64)
	}
	s := fmt.Sprintf("# ratio %s c=%d msgs_per_sec=%s p99=%s", lib.Scenario, lib.Concurrency,
		ratio(lib.MsgsPerSec, raw.MsgsPerSec), ratio(lib.P99us, raw.P99us))
	if lib.P50us > 0 && raw.P50us > 0 {
		s += " p50=" + ratio(lib.P50us, raw.P50us)
	}
	return s + fmt.Sprintf(" (%s %.0f/s vs %s %.0f/s)", lib.Scenario, lib.MsgsPerSec, raw.Scenario, raw.MsgsPerSec), nil
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}

// percentile returns the nearest-rank percentile p (0..100) of sorted durations, in µs.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return round(float64(sorted[i].Nanoseconds())/1e3, 1)
}

var (
	createdMu     sync.Mutex
	createdQueues []string // every name queueName handed out, for the tests' clean-up check
)

// queueName returns a queue name no other run uses: mmbench.<kind>.<uuid>.
func queueName(kind string) string {
	name := "mmbench." + kind + "." + uuid.NewString()
	createdMu.Lock()
	createdQueues = append(createdQueues, name)
	createdMu.Unlock()
	return name
}

// dial opens a raw connection and one channel, with a bounded dial.
func dial(url string) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Dial:       amqp.DefaultDial(10 * time.Second),
		Properties: amqp.Table{"connection_name": "mmbench"},
	})
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// deleteQueue removes a benchmark queue on a connection of its own, so that it also works
// after the scenario's channels died.
func deleteQueue(url, name string) {
	conn, ch, err := dial(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mmbench: could not delete queue %s: %v\n", name, err)
		return
	}
	defer conn.Close()
	if _, err := ch.QueueDelete(name, false, false, false); err != nil {
		fmt.Fprintf(os.Stderr, "mmbench: could not delete queue %s: %v\n", name, err)
	}
}

// waitDepth polls (passive declare) until the queue holds at least n messages.
func waitDepth(ctx context.Context, ch *amqp.Channel, name string, n int) error {
	for {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			return err
		}
		if q.Messages >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("queue %s holds %d of %d messages: %w", name, q.Messages, n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// prefill publishes n persistent SIZE-byte messages to queue (which must exist) with
// pipelined confirms, untimed, and waits until the broker holds them: the set-up of the
// consume scenarios.
func prefill(ctx context.Context, url, queue string, n, size int) error {
	conn, ch, err := dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := publishConfirmed(ctx, ch, queue, n, 1, payload(size), 1000); err != nil {
		return fmt.Errorf("pre-fill: %w", err)
	}
	return waitDepth(ctx, ch, queue, n)
}

// measureCalls runs n timed calls spread over c goroutines, after warmup untimed calls per
// goroutine, and returns the wall time of the timed part and the sorted per-call
// latencies. The first error stops the run. Round-trip scenarios (raw-rpc, rpc) share it
// so that both sides are measured the same way.
func measureCalls(ctx context.Context, c, n, warmup int, call func(ctx context.Context) error) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ready, finished sync.WaitGroup
	begin := make(chan struct{})
	lats := make([][]time.Duration, c)
	errs := make([]error, c)
	for w := range c {
		count := n / c
		if w < n%c {
			count++
		}
		ready.Add(1)
		finished.Add(1)
		go func() {
			defer finished.Done()
			for range warmup {
				if errs[w] = call(ctx); errs[w] != nil {
					cancel()
					break
				}
			}
			ready.Done()
			select {
			case <-begin:
			case <-ctx.Done():
				return
			}
			if errs[w] != nil {
				return
			}
			lat := make([]time.Duration, 0, count)
			for range count {
				t := time.Now()
				if errs[w] = call(ctx); errs[w] != nil {
					cancel()
					return
				}
				lat = append(lat, time.Since(t))
			}
			lats[w] = lat
		}()
	}
	ready.Wait()
	start := time.Now()
	close(begin)
	finished.Wait()
	elapsed := time.Since(start)
	// Report the cause, not the cancellations it caused in the other goroutines.
	var first error
	for _, err := range errs {
		if err != nil && (first == nil || errors.Is(first, context.Canceled)) {
			first = err
		}
	}
	if first != nil {
		return 0, nil, first
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return elapsed, all, nil
}
