package main

// Leader election timings (patterns/election), with every instance a process of its own
// (mmbench re-executes itself as an elector when MMBENCH_ELECTOR is set):
//
//	mmbench -scenario election-start    -c 3 -n 10   # c instances start together: time until all agree on one leader
//	mmbench -scenario election-failover -c 3 -n 10   # kill -9 the leader: time until the others agree on a new one
//	mmbench -scenario election-failover -c 3 -n 10 -opt kill=term   # clean stop (SIGTERM) instead
//
// -n is the number of rounds; Seconds is the sum of the measured times, p50/p99 their
// percentiles (µs). Options: -opt retry=500ms (follower lock retry), -opt heartbeat=1s.
// A round's clock starts just before the processes are started (election-start) or the
// leader is signalled (election-failover; 1 s plus a random fraction of two retry
// intervals after the previous round settled) and stops when the last instance reports the
// same live leader (read from the JSON lines the electors print, by this process's
// clock).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/election"
	"github.com/micromessaging/micromessaging/peerstatus"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

const electorEnv = "MMBENCH_ELECTOR" // service name: run as an elector process

func init() {
	if svc := os.Getenv(electorEnv); svc != "" {
		os.Exit(runElector(svc))
	}
	register("election-start", electionStart)
	register("election-failover", electionFailover)
}

// electionOpts reads the options shared by both scenarios.
func electionOpts(cfg config) (retry, heartbeat time.Duration, err error) {
	retry, heartbeat = 500*time.Millisecond, time.Second
	for key, dst := range map[string]*time.Duration{"retry": &retry, "heartbeat": &heartbeat} {
		if v, ok := cfg.extra[key]; ok {
			if *dst, err = time.ParseDuration(v); err != nil {
				return 0, 0, fmt.Errorf("-opt %s=%s: %w", key, v, err)
			}
		}
	}
	return retry, heartbeat, nil
}

// runElector is one elector process: it prints {"event":"joined","self"} and then
// {"event":"leader","leader","term"} at every change of the leader it knows, until
// killed or SIGTERM (then it stops cleanly: a leader releases the lock and announces it).
func runElector(service string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "elector:", err); return 1 }
	retry, _ := time.ParseDuration(os.Getenv(electorEnv + "_RETRY"))
	heartbeat, _ := time.ParseDuration(os.Getenv(electorEnv + "_HEARTBEAT"))
	id := uuid.NewString()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: os.Getenv(electorEnv + "_URL"), Name: "mmbench elector " + id[:8]})
	if err != nil {
		return fail(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := conn.Connect(cctx); err != nil {
		return fail(err)
	}
	defer conn.Close()
	pubSub := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &pubSub})
	if err != nil {
		return fail(err)
	}
	defer pub.Close()
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{pubSub}, NoAck: true,
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: wire.ListenQueue(service, uuid.NewString()), Exclusive: true, AutoDelete: true,
				Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
		},
	})
	if err != nil {
		return fail(err)
	}
	defer sub.Close()
	tracker, err := peerstatus.New(peerstatus.Config{Service: service, InstanceID: id, Publisher: pub, Subscriber: sub, Interval: heartbeat})
	if err != nil {
		return fail(err)
	}
	el, err := election.New(election.Config{Tracker: tracker, Locker: conn, RetryInterval: retry})
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(v map[string]any) { mu.Lock(); defer mu.Unlock(); enc.Encode(v) }
	var wg sync.WaitGroup
	wg.Add(3)
	// Until closed, not until the signal: the elector stops before the tracker, so its
	// step-down heartbeat goes out before the tracker's goodbye.
	go func() { defer wg.Done(); tracker.Run(context.Background()) }()
	go func() { defer wg.Done(); el.Run(context.Background()) }()
	go func() {
		defer wg.Done()
		last := ""
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-el.Changes():
				if s.LeaderID != "" && s.LeaderID != last {
					last = s.LeaderID
					emit(map[string]any{"event": "leader", "leader": s.LeaderID, "term": s.Term})
				}
			}
		}
	}()
	emit(map[string]any{"event": "joined", "self": id})
	<-ctx.Done()
	el.Close()
	tracker.Close()
	wg.Wait()
	return 0
}

// electorProc is one elector process seen from the benchmark.
type electorProc struct {
	cmd  *exec.Cmd
	id   string
	done chan struct{} // its stdout ended
}

// electors runs elector processes of one service and tracks what each reports.
type electors struct {
	url, service     string
	retry, heartbeat time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every report
	known   map[*electorProc]string
	procs   []*electorProc
	wg      sync.WaitGroup
}

func newElectors(url string, retry, heartbeat time.Duration) *electors {
	return &electors{url: url, service: "mmbench-election-" + uuid.NewString()[:8], retry: retry, heartbeat: heartbeat,
		changed: make(chan struct{}), known: map[*electorProc]string{}}
}

func (e *electors) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// start launches n processes without waiting for them.
func (e *electors) start(n int) error {
	for range n {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), electorEnv+"="+e.service, electorEnv+"_URL="+e.url,
			electorEnv+"_RETRY="+e.retry.String(), electorEnv+"_HEARTBEAT="+e.heartbeat.String())
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		p := &electorProc{cmd: cmd, done: make(chan struct{})}
		e.mu.Lock()
		e.procs = append(e.procs, p)
		e.mu.Unlock()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer close(p.done)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var ev struct{ Event, Self, Leader string }
				if json.Unmarshal(sc.Bytes(), &ev) != nil {
					continue
				}
				e.mu.Lock()
				switch ev.Event {
				case "joined":
					p.id = ev.Self
				case "leader":
					e.known[p] = ev.Leader
				}
				e.notify()
				e.mu.Unlock()
			}
		}()
	}
	return nil
}

// agreed waits until every live process reports the same live leader and returns it.
func (e *electors) agreed(ctx context.Context) (*electorProc, error) {
	for {
		e.mu.Lock()
		changed := e.changed
		var leader *electorProc
		ok := len(e.procs) > 0
		for _, p := range e.procs {
			k := e.known[p]
			if k == "" || (leader != nil && leader.id != k) {
				ok = false
				break
			}
			for _, q := range e.procs {
				if q.id == k {
					leader = q
				}
			}
			if leader == nil {
				ok = false
				break
			}
		}
		e.mu.Unlock()
		if ok {
			return leader, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("no agreement on a leader: %w", ctx.Err())
		}
	}
}

// stop signals p and forgets it.
func (e *electors) stop(p *electorProc, sig syscall.Signal) error {
	e.mu.Lock()
	e.procs = slices.DeleteFunc(e.procs, func(q *electorProc) bool { return q == p })
	delete(e.known, p)
	e.mu.Unlock()
	if err := p.cmd.Process.Signal(sig); err != nil {
		return err
	}
	<-p.done
	p.cmd.Wait()
	return nil
}

// close stops every process cleanly (kill -9 after 10 s).
func (e *electors) close() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		p.cmd.Wait()
	}
	e.wg.Wait()
}

func summarize(times []time.Duration, opts string) result {
	slices.Sort(times)
	var total time.Duration
	for _, d := range times {
		total += d
	}
	return result{Seconds: total.Seconds(), P50us: percentile(times, 50), P99us: percentile(times, 99), Opts: opts}
}

func electionStart(ctx context.Context, cfg config) (result, error) {
	retry, heartbeat, err := electionOpts(cfg)
	if err != nil {
		return result{}, err
	}
	var times []time.Duration
	for range cfg.n {
		e := newElectors(cfg.url, retry, heartbeat)
		began := time.Now()
		err := e.start(cfg.c)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			_, err = e.agreed(rctx)
			cancel()
			times = append(times, time.Since(began))
		}
		e.close()
		if err != nil {
			return result{}, err
		}
	}
	return summarize(times, fmt.Sprintf("instances=%d retry=%v heartbeat=%v (processes, from start to agreement)", cfg.c, retry, heartbeat)), nil
}

func electionFailover(ctx context.Context, cfg config) (result, error) {
	retry, heartbeat, err := electionOpts(cfg)
	if err != nil {
		return result{}, err
	}
	if cfg.c < 2 {
		return result{}, errors.New("election-failover needs -c 2 or more")
	}
	sig, how := syscall.SIGKILL, "kill -9"
	if cfg.extra["kill"] == "term" {
		sig, how = syscall.SIGTERM, "SIGTERM"
	}
	e := newElectors(cfg.url, retry, heartbeat)
	defer e.close()
	wait := func() (*electorProc, error) {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return e.agreed(rctx)
	}
	if err := e.start(cfg.c); err != nil {
		return result{}, err
	}
	leader, err := wait()
	if err != nil {
		return result{}, err
	}
	var times []time.Duration
	for range cfg.n {
		// Let the followers' retry timers drift apart from the moment they joined (a
		// newcomer's first lock attempt is what completes the agreement): without this
		// pause the kill would always land just after a follower's attempt.
		select {
		case <-time.After(time.Second + rand.N(2*retry)):
		case <-ctx.Done():
			return result{}, ctx.Err()
		}
		began := time.Now()
		if err := e.stop(leader, sig); err != nil {
			return result{}, err
		}
		if leader, err = wait(); err != nil {
			return result{}, err
		}
		times = append(times, time.Since(began))
		// Back to c instances; the newcomer must know the leader before the next round.
		if err := e.start(1); err != nil {
			return result{}, err
		}
		if leader, err = wait(); err != nil {
			return result{}, err
		}
	}
	return summarize(times, fmt.Sprintf("instances=%d retry=%v heartbeat=%v leader stopped by %s", cfg.c, retry, heartbeat, how)), nil
}
