package election

// Broker tests of what the issue promises: leader-only handlers consume only on the
// leader, also across a failover on the RabbitMQ transport, and no term is ever led by
// two instances.

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

func needRabbitmqctl(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatal("rabbitmqctl is needed to close the leader's connection from the broker side")
	}
}

// handling is one call of a leader-only handler.
type handling struct {
	inst    string // client connection name of the instance
	term    uint64 // TermFromContext
	payload string
}

type handlings struct {
	mu  sync.Mutex
	all []handling
}

func (h *handlings) add(x handling) {
	h.mu.Lock()
	h.all = append(h.all, x)
	h.mu.Unlock()
}

func (h *handlings) snapshot() []handling {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.all)
}

// handledAll reports whether every payload "<prefix>-<k>", k < n, was handled at least once.
func (h *handlings) handledAll(prefix string, n int) bool {
	seen := map[string]bool{}
	for _, x := range h.snapshot() {
		seen[x.payload] = true
	}
	for k := range n {
		if !seen[jobPayload(prefix, k)] {
			return false
		}
	}
	return true
}

func jobPayload(prefix string, k int) string { return fmt.Sprintf(`"%s-%d"`, prefix, k) }

// jobsAdmin is a connection of the test's own: it declares, feeds, inspects and deletes
// the shared jobs queue, and is never closed by the test's kills.
type jobsAdmin struct {
	conn  *rabbitmq.Connection
	pub   *rabbitmq.Publisher
	queue string
}

// jobsQueueArgs: the queue is durable like a task queue; x-expires removes it should the
// test die before deleting it.
var jobsQueueArgs = amqp.Table{"x-expires": int32(10 * 60 * 1000)}

func newJobsAdmin(t *testing.T, url, queue string) *jobsAdmin {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: testbroker.Name("mm-election-test-admin")})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	a := &jobsAdmin{conn: conn, queue: queue}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if ch, err := conn.Channel(ctx); err == nil {
			if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
				t.Errorf("delete %s: %v", queue, err)
			}
			ch.Close()
		}
		if a.pub != nil {
			a.pub.Close()
		}
		conn.Close()
	})
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, jobsQueueArgs); err != nil {
		t.Fatal(err)
	}
	// The default exchange with the queue name as routing key, confirmed, as tasks go.
	if a.pub, err = rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *jobsAdmin) publish(t *testing.T, prefix string, n int) {
	t.Helper()
	for k := range n {
		if err := a.pub.Publish(a.queue, message.NewMessage(watermill.NewUUID(), []byte(jobPayload(prefix, k)))); err != nil {
			t.Fatal(err)
		}
	}
}

// consumers returns the number of consumers of the jobs queue, as the broker counts them.
func (a *jobsAdmin) consumers(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := a.conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(a.queue, true, false, false, false, jobsQueueArgs)
	if err != nil {
		t.Fatal(err)
	}
	return q.Consumers
}

// Two instances of one service, each with a Watermill router and a leader-only handler on
// one shared durable queue, over the rabbitmq transport. Only the leader consumes; when
// the broker closes the leader's connection, the other instance steps up, its handler
// consumes what is left, and the old leader's handler stays stopped after it reconnects.
func TestBrokerLeaderOnlyHandlerFailsOver(t *testing.T) {
	needRabbitmqctl(t)
	url := testbroker.URL(t)
	service := testbroker.Name("elect")
	admin := newJobsAdmin(t, url, testbroker.Name("q.requests."+service+".jobs"))
	rec := newTerms(t)
	var got handlings
	var slow atomic.Int64 // how long the handler works on a message, in ns

	type member struct {
		*instance
		router *message.Router
	}
	var members []*member
	for range 2 {
		name := testbroker.Name("mm-election-test")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		i, err := newInstance(ctx, instanceConfig{url: url, service: service, name: name,
			interval: 500 * time.Millisecond, retry: 200 * time.Millisecond,
			// A killed leader reconnects only after 3-6 s, by when the other instance
			// (retrying every 200 ms) holds the lock: the test knows who leads next.
			backoffMin: 6 * time.Second, backoffMax: 6 * time.Second,
			onStepUp: func(u StepUp) { rec.record(name, u.Term) }})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		jobs, err := rabbitmq.NewSubscriber(i.conn, rabbitmq.SubscriberConfig{
			Queue: func(topic string) rabbitmq.Queue {
				return rabbitmq.Queue{Name: topic, Durable: true, Args: jobsQueueArgs}
			},
			Prefetch: 4, NackDelay: 20 * time.Millisecond, CloseTimeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		// Watermill closes a router whose handlers all stopped: one handler always runs.
		keep := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
		router.AddConsumerHandler("keepalive", "keepalive", keep, func(*message.Message) error { return nil })
		i.el.AddConsumerHandler(router, "jobs", admin.queue, jobs, func(msg *message.Message) error {
			term, ok := TermFromContext(msg.Context())
			if !ok {
				t.Error("no term in the leader-only handler's context")
			}
			got.add(handling{inst: name, term: term, payload: string(msg.Payload)})
			time.Sleep(time.Duration(slow.Load()))
			return nil
		})
		i.start(func(err error) { t.Error(err) })
		rctx, rcancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := router.Run(rctx); err != nil {
				t.Errorf("%s router: %v", name, err)
			}
		}()
		t.Cleanup(func() {
			rcancel()
			router.Close()
			<-done
			i.stop()
			jobs.Close()
			keep.Close()
		})
		members = append(members, &member{instance: i, router: router})
	}
	both := []*instance{members[0].instance, members[1].instance}

	// 1. Only the leader consumes.
	leader := agree(t, "start", both, 0)
	var follower *instance
	for _, i := range both {
		if i != leader {
			follower = i
		}
	}
	eventuallyB(t, "the leader's handler consumes", func() bool { return admin.consumers(t) == 1 })
	admin.publish(t, "p1", 20)
	eventuallyB(t, "phase 1 handled", func() bool { return got.handledAll("p1", 20) })
	for _, x := range got.snapshot() {
		if x.inst != leader.name || x.term != leader.el.Term() {
			t.Fatalf("phase 1: %s handled by %s in term %d; the leader is %s in term %d",
				x.payload, x.inst, x.term, leader.name, leader.el.Term())
		}
	}
	if n := admin.consumers(t); n != 1 {
		t.Fatalf("%d consumers on the jobs queue, want the leader's only", n)
	}

	// 2. The broker closes the leader's connection while it works through a backlog.
	slow.Store(int64(50 * time.Millisecond))
	admin.publish(t, "p2", 60)
	eventuallyB(t, "the leader works on phase 2", func() bool {
		n := 0
		for _, x := range got.snapshot() {
			if strings.HasPrefix(x.payload, `"p2-`) {
				n++
			}
		}
		return n >= 8
	})
	oldTerm := leader.el.Term()
	if n := closeConnection(t, leader.name); n != 1 {
		t.Fatalf("closed %d connections named %s", n, leader.name)
	}
	// It steps down as soon as its client sees the connection closed, not once it is back
	// and hears of a newer leader: while it is still disconnected (3-6 s).
	sawDown := false // the old leader's connection was seen down (it stays down 3-6 s)
	eventuallyB(t, "the old leader steps down", func() bool {
		connected := leader.conn.State() == rabbitmq.Connected
		sawDown = sawDown || !connected
		if sawDown && connected {
			t.Fatal("the old leader still led when its connection came back: it did not step down when the connection was lost")
		}
		return !leader.el.IsLeader()
	})
	eventuallyB(t, "the follower steps up", func() bool { return follower.el.IsLeader() && follower.el.Term() > oldTerm })
	if leader.el.IsLeader() {
		t.Fatal("both instances lead")
	}
	eventuallyB(t, "the new leader handles the rest of phase 2", func() bool { return got.handledAll("p2", 60) })
	// The old leader reconnects (3-6 s) and follows; its handler must stay stopped.
	newLeader := agree(t, "after the failover", both, oldTerm)
	if newLeader != follower {
		t.Fatalf("the old leader %s won the lock back before %s retried (is the machine very slow?)", leader.name, follower.name)
	}
	if s := leader.conn.State(); s != rabbitmq.Connected {
		t.Fatalf("old leader's connection is %v after agreeing", s)
	}

	// 3. After the failover only the new leader consumes.
	slow.Store(0)
	mark := len(got.snapshot())
	admin.publish(t, "p3", 40)
	eventuallyB(t, "phase 3 handled", func() bool { return got.handledAll("p3", 40) })
	newTerm := follower.el.Term()
	for _, x := range got.snapshot()[mark:] {
		if x.inst != follower.name || x.term != newTerm {
			t.Errorf("after the failover: %s handled by %s in term %d; the leader is %s in term %d",
				x.payload, x.inst, x.term, follower.name, newTerm)
		}
	}
	if n := admin.consumers(t); n != 1 {
		t.Fatalf("%d consumers on the jobs queue after the failover, want the new leader's only", n)
	}
	// Every handling ran in a term its instance led.
	for _, x := range got.snapshot() {
		if x.inst == leader.name && x.term != oldTerm || x.inst == follower.name && x.term != newTerm {
			t.Errorf("%s handled by %s in term %d (old leader's term %d, new leader's %d)",
				x.payload, x.inst, x.term, oldTerm, newTerm)
		}
	}
}

// views records every State the electors of a group report (on Changes) and checks
// the safety properties: a term has one leader, and what each instance reports never
// goes back to an older term.
type views struct {
	t        *testing.T
	mu       sync.Mutex
	leaderOf map[uint64]string // term -> leader id, from every report naming both
	last     map[string]uint64 // instance -> term it last reported
	reports  int
}

func newViews(t *testing.T) *views {
	return &views{t: t, leaderOf: map[uint64]string{}, last: map[string]uint64{}}
}

func (v *views) record(self string, s State) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reports++
	if s.IsLeader && s.LeaderID != self {
		v.t.Errorf("%s leads but names %q as leader", self, s.LeaderID)
	}
	if s.Term < v.last[self] {
		v.t.Errorf("%s went back from term %d to %d (%+v)", self, v.last[self], s.Term, s)
	}
	v.last[self] = s.Term
	if s.Term == 0 || s.LeaderID == "" {
		return
	}
	if l, ok := v.leaderOf[s.Term]; ok && l != s.LeaderID {
		v.t.Errorf("term %d has two leaders: %s and %s (reported by %s: %+v)", s.Term, l, s.LeaderID, self, s)
	}
	v.leaderOf[s.Term] = s.LeaderID
}

// watch records the States of insts until the returned function is called.
func (v *views) watch(insts []*instance) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, i := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case s := <-i.el.Changes():
					v.record(i.el.ID(), s)
				case <-done:
					return
				}
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done) }); wg.Wait() }
}

// Safety across repeated failovers: the broker closes the leader's connection five times
// in a group of three. Every state an elector reports and every step-up are recorded: no
// term is led by two instances, each instance's terms only grow, and so do the terms of
// successive leaders.
func TestBrokerNoTermHasTwoLeaders(t *testing.T) {
	needRabbitmqctl(t)
	g := newGroup(t)
	insts := g.add(3, 100*time.Millisecond)
	v := newViews(t)
	stop := v.watch(insts)
	defer stop()
	term := uint64(0)
	var leaders []string
	for round := range 5 {
		leader := agree(t, fmt.Sprintf("round %d", round), insts, term)
		term = leader.el.Term()
		leaders = append(leaders, fmt.Sprintf("%s@%d", leader.name, term))
		if n := closeConnection(t, leader.name); n != 1 {
			t.Fatalf("closed %d connections named %s", n, leader.name)
		}
		eventuallyB(t, "the old leader steps down", func() bool { return !leader.el.IsLeader() || leader.el.Term() > term })
	}
	last := agree(t, "after the last kill", insts, term)
	leaders = append(leaders, fmt.Sprintf("%s@%d", last.name, last.el.Term()))
	stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.reports < 3*6 {
		t.Errorf("only %d states recorded", v.reports)
	}
	g.terms.mu.Lock()
	defer g.terms.mu.Unlock()
	if len(g.terms.by) < 6 {
		t.Errorf("%d step-ups recorded for 6 leaderships", len(g.terms.by))
	}
	t.Logf("leaders: %s; %d states recorded, %d terms", strings.Join(leaders, " "), v.reports, len(v.leaderOf))
}
