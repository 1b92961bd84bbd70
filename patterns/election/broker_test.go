package election

// Integration tests against RabbitMQ: every instance has its own connection (named, so
// the tests can close exactly their own from the broker side), Tracker and Elector.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/peerstatus"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// childEnv makes the test binary run one elector process (runChild) instead of tests.
const childEnv = "MM_ELECTION_CHILD"

// agreeTimeout is generous: the machine is shared and noisy; speed is measured by
// cmd/mmbench's election scenarios, not asserted here.
const agreeTimeout = 30 * time.Second

// instance is one elector with everything it needs, on a connection of its own.
type instance struct {
	name    string // client connection name
	conn    *rabbitmq.Connection
	pub     *rabbitmq.Publisher
	sub     *rabbitmq.Subscriber
	tracker *peerstatus.Tracker
	el      *Elector
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

type instanceConfig struct {
	url, service, name     string
	interval, retry        time.Duration
	backoffMin, backoffMax time.Duration // reconnect backoff; 0 = 50 ms and 500 ms
	onStepUp               func(StepUp)
	onStepDown             func(StepDown)
}

// newInstance connects and builds an instance; start runs it.
func newInstance(ctx context.Context, c instanceConfig) (*instance, error) {
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: c.url, Name: c.name,
		BackoffMin: cmp.Or(c.backoffMin, 50*time.Millisecond), BackoffMax: cmp.Or(c.backoffMax, 500*time.Millisecond)})
	if err != nil {
		return nil, err
	}
	if err := conn.Connect(ctx); err != nil {
		return nil, err
	}
	i := &instance{name: c.name, conn: conn}
	pubSub := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	i.pub, err = rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &pubSub})
	if err == nil {
		i.sub, err = rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
			Declare: []rabbitmq.Exchange{pubSub}, NoAck: true,
			Queue: func(topic string) rabbitmq.Queue {
				return rabbitmq.Queue{Name: wire.ListenQueue(c.service, uuid.NewString()), Exclusive: true, AutoDelete: true,
					Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
			},
		})
	}
	if err == nil {
		i.tracker, err = peerstatus.New(peerstatus.Config{Service: c.service, Publisher: i.pub, Subscriber: i.sub, Interval: c.interval})
	}
	if err == nil {
		i.el, err = New(Config{Tracker: i.tracker, Locker: conn, RetryInterval: c.retry, OnStepUp: c.onStepUp, OnStepDown: c.onStepDown})
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return i, nil
}

func (i *instance) start(onErr func(error)) {
	ctx, cancel := context.WithCancel(context.Background())
	i.cancel = cancel
	i.wg.Add(2)
	go func() {
		defer i.wg.Done()
		if err := i.tracker.Run(ctx); err != nil {
			onErr(fmt.Errorf("%s tracker: %w", i.name, err))
		}
	}()
	go func() {
		defer i.wg.Done()
		if err := i.el.Run(ctx); err != nil {
			onErr(fmt.Errorf("%s elector: %w", i.name, err))
		}
	}()
}

// stop closes the instance cleanly (elector first: it hands over; then the tracker).
func (i *instance) stop() {
	i.once.Do(func() {
		i.el.Close()
		i.tracker.Close()
		if i.cancel != nil {
			i.cancel()
		}
		i.wg.Wait()
		i.sub.Close()
		i.pub.Close()
		i.conn.Close()
	})
}

type group struct {
	t       *testing.T
	url     string
	service string
	terms   *terms
	all     []*instance
}

func newGroup(t *testing.T) *group {
	return &group{t: t, url: testbroker.URL(t), service: testbroker.Name("elect"), terms: newTerms(t)}
}

// add starts n instances at once.
func (g *group) add(n int, retry time.Duration) []*instance {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]*instance, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := testbroker.Name("mm-election-test")
			out[k], errs[k] = newInstance(ctx, instanceConfig{url: g.url, service: g.service, name: name,
				interval: 500 * time.Millisecond, retry: retry,
				onStepUp: func(u StepUp) { g.terms.record(name, u.Term) }})
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			g.t.Fatal(err)
		}
		out[k].start(func(err error) { g.t.Error(err) })
		g.t.Cleanup(out[k].stop)
	}
	g.all = append(g.all, out...)
	return out
}

// agree waits until exactly one of insts leads and all of them know it, then returns it.
// Terms must be the leader's everywhere, and above minTerm.
func agree(t *testing.T, what string, insts []*instance, minTerm uint64) *instance {
	t.Helper()
	deadline := time.Now().Add(agreeTimeout)
	for {
		var leader *instance
		ok := true
		for _, i := range insts {
			if i.el.IsLeader() {
				if leader != nil {
					ok = false
				}
				leader = i
			}
		}
		if ok && leader != nil {
			st := leader.el.State()
			for _, i := range insts {
				if s := i.el.State(); s.LeaderID != st.LeaderID || s.Term != st.Term {
					ok = false
				}
			}
			if ok && st.Term > minTerm {
				return leader
			}
		}
		if time.Now().After(deadline) {
			var s []string
			for _, i := range insts {
				s = append(s, fmt.Sprintf("%s (%s): %+v", i.name, i.el.ID(), i.el.State()))
			}
			t.Fatalf("%s: no agreement within %v:\n%s", what, agreeTimeout, strings.Join(s, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBrokerGroupsAgree(t *testing.T) {
	for _, n := range []int{1, 2, 5, 10} {
		t.Run(fmt.Sprintf("%d instances", n), func(t *testing.T) {
			g := newGroup(t)
			insts := g.add(n, 0)
			leader := agree(t, "start", insts, 0)
			// Everyone's table holds everyone.
			for _, i := range insts {
				i := i
				eventuallyB(t, i.name+" sees the whole group", func() bool { return len(i.tracker.Peers()) == n })
			}
			if n == 1 && leader != insts[0] {
				t.Fatal("a lone instance does not lead")
			}
			// Status, as Node's getStatus would ask, answered by all.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := insts[0].tracker.Status(ctx, g.service)
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Members) != n || st.LeaderID != leader.el.ID() {
				t.Fatalf("Status: %d members, leader %q; want %d, %q", len(st.Members), st.LeaderID, n, leader.el.ID())
			}
		})
	}
}

func eventuallyB(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(agreeTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", agreeTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeConnection closes, from the broker side, the connections whose client connection
// name is name (only this test's), and returns how many.
func closeConnection(t *testing.T, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties").CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v: %s", err, out)
	}
	want := fmt.Sprintf(`{"connection_name","%s"}`, name)
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, want) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "election test: leader killed").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
		}
		n++
	}
	return n
}

func TestBrokerLeaderConnectionClosedRepeatedly(t *testing.T) {
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatal("rabbitmqctl is needed to close the leader's connection from the broker side")
	}
	g := newGroup(t)
	insts := g.add(3, 0)
	term := uint64(0)
	for round := range 4 {
		leader := agree(t, fmt.Sprintf("round %d", round), insts, term)
		term = leader.el.Term()
		if n := closeConnection(t, leader.name); n != 1 {
			t.Fatalf("closed %d connections named %s", n, leader.name)
		}
		// The leader notices at once (connection.close from the broker) and steps down;
		// the group (the old leader again, once reconnected) agrees on a new term.
		eventuallyB(t, "the old leader steps down", func() bool { return !leader.el.IsLeader() || leader.el.Term() > term })
	}
	agree(t, "last round", insts, term)
}

func TestBrokerLateJoinerSeesTheLeader(t *testing.T) {
	g := newGroup(t)
	first := g.add(2, 0)
	leader := agree(t, "start", first, 0)
	// The joiner retries the lock only every hour: it can only learn the leader by
	// asking (peer.alive.req), well before the leader's next periodic heartbeat would
	// be needed.
	late := g.add(1, time.Hour)[0]
	eventuallyB(t, "the late joiner knows the leader", func() bool {
		return late.el.Leader() == leader.el.ID() && late.el.Term() == leader.el.Term()
	})
	if late.el.IsLeader() {
		t.Fatal("late joiner leads")
	}
	// A clean stop of the leader hands over at once, even to the hourly retrier. The
	// term is read before the stop: while stopping, the old leader may still hear its
	// successor and take up the new term.
	term := leader.el.Term()
	leader.stop()
	var rest []*instance
	for _, i := range g.all {
		if i != leader {
			rest = append(rest, i)
		}
	}
	agree(t, "after the leader stopped", rest, term)
}

// child is an elector process: the test binary re-executed with childEnv set.
type child struct {
	cmd    *exec.Cmd
	id     string
	leader chan string // leader ids it reports
	done   chan struct{}
}

func startChild(t *testing.T, url, service string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+service, "RABBIT_URI="+url)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, leader: make(chan string, 100), done: make(chan struct{})}
	ids := make(chan string, 1)
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev struct{ Event, Self, Leader string }
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch ev.Event {
			case "joined":
				ids <- ev.Self
			case "leader":
				select {
				case c.leader <- ev.Leader:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
		c.cmd.Wait()
	})
	select {
	case c.id = <-ids:
	case <-c.done:
		t.Fatal("elector process ended before joining")
	case <-time.After(agreeTimeout):
		t.Fatal("elector process did not join")
	}
	return c
}

// runChild is the elector process: one instance, JSON lines on stdout, until killed or
// SIGTERM (then it stops cleanly).
func runChild() int {
	service := os.Getenv(childEnv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	i, err := newInstance(cctx, instanceConfig{url: testbroker.URLFromEnv(), service: service,
		name: "mm-election-child " + service, interval: 500 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	enc := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	emit := func(v map[string]any) { mu.Lock(); enc.Encode(v); mu.Unlock() }
	i.start(func(err error) { fmt.Fprintln(os.Stderr, "child:", err) })
	emit(map[string]any{"event": "joined", "self": i.el.ID()})
	go func() {
		last := ""
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-i.el.Changes():
				if s.LeaderID != "" && s.LeaderID != last {
					last = s.LeaderID
					emit(map[string]any{"event": "leader", "self": i.el.ID(), "leader": s.LeaderID, "term": s.Term})
				}
			}
		}
	}()
	<-ctx.Done()
	i.stop()
	return 0
}

func TestBrokerLeaderProcessKilled(t *testing.T) {
	g := newGroup(t)
	c := startChild(t, g.url, g.service)
	// Alone, the process elects itself.
	select {
	case id := <-c.leader:
		if id != c.id {
			t.Fatalf("lone process follows %s", id)
		}
	case <-time.After(agreeTimeout):
		t.Fatal("lone process did not elect itself")
	}
	insts := g.add(2, 0)
	eventuallyB(t, "the group follows the process", func() bool {
		return insts[0].el.Leader() == c.id && insts[1].el.Leader() == c.id
	})
	term := insts[0].el.Term()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	leader := agree(t, "after kill -9 of the leader process", insts, term)
	if leader.el.ID() == c.id {
		t.Fatal("dead process still leader")
	}
	// The dead instance leaves the tables once silent long enough.
	eventuallyB(t, "the dead process is gone from the table", func() bool {
		for _, p := range leader.tracker.Peers() {
			if p.ID == c.id {
				return false
			}
		}
		return true
	})
}
