package peerstatus

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/internal/latest"
	"github.com/micromessaging/micromessaging/internal/lifecycle"
	"github.com/micromessaging/micromessaging/wire"
)

var (
	// ErrClosed is returned by Run after Close.
	ErrClosed = errors.New("peerstatus: tracker closed")
	// ErrRunning is returned by a second call of Run.
	ErrRunning = errors.New("peerstatus: Run already called")
	// ErrNoPeers is returned by Status when no instance of the service answered in time.
	ErrNoPeers = errors.New("peerstatus: no instance of the service answered")
	// ErrSubscriptionClosed is returned by Run when the Subscriber closed a heartbeat
	// subscription while Run was still running (for example, the Subscriber was closed).
	ErrSubscriptionClosed = errors.New("peerstatus: heartbeat subscription closed")
)

// AliveTopic is the event key of service's heartbeats: internal.<service>.peer.alive.
func AliveTopic(service string) string { return wire.EventKey("internal."+service, "peer.alive") }

// RequestTopic is the event key that asks service's instances for a heartbeat at once:
// internal.<service>.peer.alive.req.
func RequestTopic(service string) string {
	return wire.EventKey("internal."+service, "peer.alive.req")
}

// requestBody is the body of a peer.alive.req event: an absent body, as Node sends it.
var requestBody = []byte(`""`)

// Leadership is what the own heartbeats say about the leader (see Tracker.SetLeadership).
type Leadership struct {
	IsLeader bool   // isMaster
	LeaderID string // leaderId; "" = unknown (the field is then omitted)
	Term     uint64 // term; 0 = none
}

// Config configures a Tracker. Zero values mean the defaults given per field.
type Config struct {
	// Service is the service name (required). Heartbeats go to AliveTopic(Service).
	// It must not contain the topic wildcards '*' or '#'.
	Service string
	// InstanceID identifies this instance; "" = a new UUID v4.
	InstanceID string

	// Publisher publishes events (required): the topic is the routing key on the
	// event exchange x.pubSub, messages are not mandatory. With the rabbitmq package:
	// rabbitmq.PublisherConfig{Exchange: wire.EventExchange}.
	Publisher message.Publisher
	// Subscriber receives events (required): every Subscribe(ctx, topic) must get its own
	// copy of every event whose key matches topic, through a queue of its own that
	// goes away when ctx ends. With the rabbitmq package: an exclusive, auto-delete queue
	// wire.ListenQueue(Service, <uuid>) per Subscribe, bound to x.pubSub with the topic as
	// binding key, consumed with NoAck (see the package documentation).
	Subscriber message.Subscriber

	// Interval is the own heartbeat period; 0 = 10 s (Node's). Peers use the period a
	// heartbeat advertises (NodeInterval for Node peers) to judge silence.
	Interval time.Duration
	// SuspectAfter is the number of missed heartbeats after which a peer is Suspect;
	// 0 = 2.
	SuspectAfter int
	// GoneAfter is the number of missed heartbeats after which a peer is Gone and
	// removed; 0 = 4 (Node prunes a peer after 40 s = 4 of its 10 s heartbeats).
	GoneAfter int
	// StatusWait is how long Status waits for answers at most; 0 = 1 s (Node's
	// getStatus waits max(6 x round trip, 1 s)).
	StatusWait time.Duration

	// Ready reports readiness (isReady); nil = always ready. Called on the heartbeat
	// goroutine before each heartbeat; must be quick.
	Ready func() bool
	// Load returns the load to publish in heartbeats (the "load" field, JSON-encoded;
	// for example the QoS limiter's state); nil = none. Called like Ready.
	Load func() any
	// OnChange, if set, is called for every join, leave and change of a member (the own
	// instance included) on a goroutine of its own, one call at a time and in order.
	// A slow OnChange never delays heartbeats: while it runs, changes are coalesced
	// and it is then called with the differences to the newest table.
	OnChange func(Change)

	// Logger; nil = watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer for the metrics; nil = no metrics are registered.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.InstanceID == "" {
		c.InstanceID = uuid.NewString()
	}
	if c.Interval == 0 {
		c.Interval = NodeInterval
	}
	if c.SuspectAfter == 0 {
		c.SuspectAfter = 2
	}
	if c.GoneAfter == 0 {
		c.GoneAfter = 4
	}
	if c.StatusWait == 0 {
		c.StatusWait = time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if err := validService(c.Service); err != nil {
		errs = append(errs, err)
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("peerstatus: Publisher is required"))
	}
	if c.Subscriber == nil {
		errs = append(errs, errors.New("peerstatus: Subscriber is required"))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("peerstatus: Interval %v is negative", c.Interval))
	}
	if c.StatusWait < 0 {
		errs = append(errs, fmt.Errorf("peerstatus: StatusWait %v is negative", c.StatusWait))
	}
	suspect, gone := cmp.Or(c.SuspectAfter, 2), cmp.Or(c.GoneAfter, 4)
	if c.SuspectAfter < 0 || c.GoneAfter < 0 {
		errs = append(errs, errors.New("peerstatus: SuspectAfter and GoneAfter must not be negative"))
	} else if gone <= suspect {
		errs = append(errs, fmt.Errorf("peerstatus: GoneAfter (%d) must be greater than SuspectAfter (%d)", gone, suspect))
	}
	return errors.Join(errs...)
}

func validService(s string) error {
	if s == "" {
		return errors.New("peerstatus: Service is required")
	}
	if strings.ContainsAny(s, "*#") {
		return fmt.Errorf("peerstatus: service %q contains a topic wildcard", s)
	}
	return nil
}

// sweepEvery is how often silent peers are checked: a quarter of the own period,
// between 10 ms and 250 ms.
func sweepEvery(interval time.Duration) time.Duration {
	return min(max(interval/4, 10*time.Millisecond), 250*time.Millisecond)
}

// closeTimeout bounds Close (the goodbye heartbeat takes at most farewellTimeout).
const (
	closeTimeout    = 5 * time.Second
	farewellTimeout = time.Second
)

// Tracker publishes this instance's heartbeats, answers heartbeat requests and keeps the
// table of the service's members. It is safe for concurrent use.
type Tracker struct {
	cfg       Config
	logger    watermill.LoggerAdapter
	metrics   *metrics
	startedAt time.Time

	mu         sync.Mutex
	tbl        table
	leadership *Leadership // nil: derived from the peers' heartbeats
	ready      bool
	load       json.RawMessage
	memory     MemoryUsage
	observers  map[int]func(Peer)
	nextObs    int
	sendFailed bool // the last heartbeat could not be sent (log only transitions)

	changes *latest.Value[[]Peer]
	hook    *latest.Value[[]Peer]
	beatNow chan struct{}
	started chan struct{}

	life lifecycle.Runner
}

// New returns a Tracker for cfg. It does no I/O and starts no goroutine; call Run.
func New(cfg Config) (*Tracker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	t := &Tracker{
		cfg:       cfg,
		logger:    cfg.Logger.With(watermill.LogFields{"component": "peerstatus", "service": cfg.Service, "instance_id": cfg.InstanceID}),
		metrics:   m,
		startedAt: time.Now(),
		tbl:       newTable(cfg.SuspectAfter, cfg.GoneAfter),
		ready:     true,
		observers: map[int]func(Peer){},
		changes:   latest.New[[]Peer](),
		beatNow:   make(chan struct{}, 1),
		started:   make(chan struct{}),
	}
	if cfg.OnChange != nil {
		t.hook = latest.New[[]Peer]()
	}
	return t, nil
}

// ID is this instance's id.
func (t *Tracker) ID() string { return t.cfg.InstanceID }

// Service is the service name.
func (t *Tracker) Service() string { return t.cfg.Service }

// Interval is the own heartbeat period.
func (t *Tracker) Interval() time.Duration { return t.cfg.Interval }

// Started is closed once Run listens to heartbeats and requests (after that, the first
// heartbeat and a peer.alive.req go out).
func (t *Tracker) Started() <-chan struct{} { return t.started }

// Peers returns the members of the service as this instance knows them, the own
// instance included (Self), ordered by id.
func (t *Tracker) Peers() []Peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.snapshotLocked(time.Now())
}

// Changes returns a latest-value channel: after every join, leave or change of a member
// (the own instance included) it holds the newest Peers snapshot, replacing an unread
// older one. Use Diff on two snapshots to see what changed. Never closed.
func (t *Tracker) Changes() <-chan []Peer { return t.changes.C() }

// SetLeadership sets what the own heartbeats say about leadership (isMaster, leaderId,
// term); the elector calls it. Until it is first called, heartbeats say isMaster:false
// and the leader learned from the peers' heartbeats. It does not send a heartbeat: call
// Announce or Beat for that.
func (t *Tracker) SetLeadership(l Leadership) {
	t.mu.Lock()
	defer t.mu.Unlock()
	prev := t.leadershipLocked()
	t.leadership = &l
	if prev != l {
		t.publishLocked(time.Now())
	}
}

// Observe registers fn, called with every heartbeat of another instance as recorded in
// the table, and with every peer that becomes Suspect or Gone (State says which).
// fn runs on the Tracker's receiving goroutine and must not block. The returned
// function unregisters fn.
func (t *Tracker) Observe(fn func(Peer)) (stop func()) {
	t.mu.Lock()
	id := t.nextObs
	t.nextObs++
	t.observers[id] = fn
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.observers, id)
		t.mu.Unlock()
	}
}

// Announce asks the running Tracker to send a heartbeat now (coalesced with other
// requests; it never blocks).
func (t *Tracker) Announce() {
	select {
	case t.beatNow <- struct{}{}:
	default:
	}
}

// Beat publishes the own heartbeat now and returns when the Publisher returns.
func (t *Tracker) Beat(ctx context.Context) error { return t.beat(ctx, false) }

// Ask publishes a peer.alive.req event for the own service: every instance answers with
// a heartbeat.
func (t *Tracker) Ask(ctx context.Context) error { return t.ask(ctx, t.cfg.Service) }

func (t *Tracker) ask(ctx context.Context, service string) error {
	msg := message.NewMessage(watermill.NewUUID(), requestBody)
	msg.SetContext(ctx)
	if err := t.cfg.Publisher.Publish(RequestTopic(service), msg); err != nil {
		return fmt.Errorf("peerstatus: ask %s: %w", service, err)
	}
	return nil
}

// Run subscribes to the service's heartbeats and heartbeat requests, sends a heartbeat
// and a peer.alive.req, then heartbeats every Interval and answers requests until ctx
// ends or Close is called; it then sends a goodbye heartbeat (Leaving) and returns nil.
// It returns an error when a subscription fails or closes while running. Run may be
// called once.
func (t *Tracker) Run(ctx context.Context) error {
	ctx, finish, err := t.life.Start(ctx)
	switch {
	case errors.Is(err, lifecycle.ErrClosed):
		return ErrClosed
	case err != nil:
		return ErrRunning
	}
	defer finish()
	ctx, cancel := context.WithCancel(ctx) // ends the loops before the goodbye heartbeat
	defer cancel()

	alive, err := t.cfg.Subscriber.Subscribe(ctx, AliveTopic(t.cfg.Service))
	if err != nil {
		return fmt.Errorf("peerstatus: subscribe %s: %w", AliveTopic(t.cfg.Service), err)
	}
	reqs, err := t.cfg.Subscriber.Subscribe(ctx, RequestTopic(t.cfg.Service))
	if err != nil {
		return fmt.Errorf("peerstatus: subscribe %s: %w", RequestTopic(t.cfg.Service), err)
	}
	close(t.started)
	t.logger.Info("Peer status running", watermill.LogFields{"interval": t.cfg.Interval.String()})

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.beatLoop(ctx)
	}()
	if t.hook != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.notifyLoop(ctx)
		}()
	}
	t.mu.Lock()
	t.publishLocked(time.Now())
	t.mu.Unlock()

	err = t.receiveLoop(ctx, alive, reqs)
	cancel()
	wg.Wait()

	fctx, fcancel := context.WithTimeout(context.Background(), min(farewellTimeout, t.cfg.Interval))
	if ferr := t.beat(fctx, true); ferr != nil {
		t.logger.Debug("Goodbye heartbeat not sent", watermill.LogFields{"error": ferr.Error()})
	}
	fcancel()
	t.metrics.peers.WithLabelValues(t.cfg.Service, Alive.String()).Set(0)
	t.metrics.peers.WithLabelValues(t.cfg.Service, Suspect.String()).Set(0)
	t.logger.Info("Peer status stopped", nil)
	return err
}

// Close stops Run (which sends a goodbye heartbeat) and waits for it, at most 5 s.
// It is idempotent; after Close, Run returns ErrClosed.
func (t *Tracker) Close() error {
	if err := t.life.Close(closeTimeout); err != nil {
		return errors.New("peerstatus: Close timed out waiting for Run to stop")
	}
	return nil
}

func (t *Tracker) receiveLoop(ctx context.Context, alive, reqs <-chan *message.Message) error {
	sweep := time.NewTicker(sweepEvery(t.cfg.Interval))
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg, ok := <-alive:
			if !ok {
				return t.closedSubscription(ctx)
			}
			msg.Ack()
			t.onHeartbeat(msg.Payload)
		case msg, ok := <-reqs:
			if !ok {
				return t.closedSubscription(ctx)
			}
			msg.Ack()
			t.Announce()
		case now := <-sweep.C:
			t.onSweep(now)
		}
	}
}

func (t *Tracker) closedSubscription(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	t.logger.Error("Heartbeat subscription closed", ErrSubscriptionClosed, nil)
	return ErrSubscriptionClosed
}

func (t *Tracker) onHeartbeat(payload []byte) {
	p, err := decodeBody(payload)
	if err != nil {
		t.metrics.heartbeats.WithLabelValues(t.cfg.Service, "malformed").Inc()
		t.logger.Debug("Malformed heartbeat ignored", watermill.LogFields{"error": err.Error()})
		return
	}
	if p.ID == t.cfg.InstanceID {
		return
	}
	t.metrics.heartbeats.WithLabelValues(t.cfg.Service, "received").Inc()
	now := time.Now()
	t.mu.Lock()
	recorded, ch, changed := t.tbl.observe(p, now)
	if changed {
		if ch.Kind != Updated {
			t.logger.Debug("Peer "+ch.Kind.String(), watermill.LogFields{"peer_id": p.ID})
		}
		t.publishLocked(now)
	}
	obs := t.observersLocked()
	t.mu.Unlock()
	for _, fn := range obs {
		fn(recorded)
	}
}

func (t *Tracker) onSweep(now time.Time) {
	t.mu.Lock()
	changes := t.tbl.sweep(now)
	if len(changes) == 0 {
		t.mu.Unlock()
		return
	}
	for _, c := range changes {
		t.logger.Info("Peer "+c.Peer.State.String(), watermill.LogFields{"peer_id": c.Peer.ID, "silent": now.Sub(c.Previous.LastSeen).String()})
	}
	t.publishLocked(now)
	obs := t.observersLocked()
	t.mu.Unlock()
	for _, c := range changes {
		for _, fn := range obs {
			fn(c.Peer)
		}
	}
}

func (t *Tracker) observersLocked() []func(Peer) {
	out := make([]func(Peer), 0, len(t.observers))
	for _, fn := range t.observers {
		out = append(out, fn)
	}
	return out
}

// leadershipLocked is what the own heartbeat says about the leader.
func (t *Tracker) leadershipLocked() Leadership {
	if t.leadership != nil {
		return *t.leadership
	}
	if p, ok := t.tbl.leader(); ok {
		return Leadership{LeaderID: p.ID, Term: p.Term}
	}
	return Leadership{}
}

// selfLocked describes the own instance.
func (t *Tracker) selfLocked(now time.Time) Peer {
	l := t.leadershipLocked()
	alive, suspect := t.tbl.counts()
	return Peer{
		ID: t.cfg.InstanceID, Service: t.cfg.Service, Self: true, State: Alive,
		IsLeader: l.IsLeader, LeaderID: l.LeaderID, Term: l.Term, Ready: t.ready,
		StartedAt: t.startedAt, Uptime: now.Sub(t.startedAt), LastSeen: now,
		Interval: t.cfg.Interval, KnownPeers: alive + suspect + 1,
		Memory: t.memory, Load: t.load, Version: BodyVersion,
	}
}

func (t *Tracker) snapshotLocked(now time.Time) []Peer {
	return sortPeers(append(t.tbl.snapshot(), t.selfLocked(now)))
}

// publishLocked hands the current table to the Changes channel, the OnChange goroutine
// and the metrics. It never blocks.
func (t *Tracker) publishLocked(now time.Time) {
	snap := t.snapshotLocked(now)
	t.changes.Set(snap)
	if t.hook != nil {
		t.hook.Set(snap)
	}
	alive, suspect := t.tbl.counts()
	t.metrics.peers.WithLabelValues(t.cfg.Service, Alive.String()).Set(float64(alive + 1))
	t.metrics.peers.WithLabelValues(t.cfg.Service, Suspect.String()).Set(float64(suspect))
}

func (t *Tracker) notifyLoop(ctx context.Context) {
	var prev []Peer
	for {
		select {
		case <-ctx.Done():
			return
		case snap := <-t.hook.C():
			for _, c := range Diff(prev, snap) {
				t.cfg.OnChange(c)
			}
			prev = snap
		}
	}
}

func (t *Tracker) beatLoop(ctx context.Context) {
	t.beatLogged(ctx)
	actx, cancel := context.WithTimeout(ctx, t.cfg.Interval)
	if err := t.Ask(actx); err != nil && ctx.Err() == nil {
		t.logger.Info("Could not ask peers for heartbeats", watermill.LogFields{"error": err.Error()})
	}
	cancel()
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.beatNow:
		}
		t.beatLogged(ctx)
	}
}

func (t *Tracker) beatLogged(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, t.cfg.Interval)
	err := t.beat(pctx, false)
	cancel()
	if ctx.Err() != nil {
		return
	}
	t.mu.Lock()
	was := t.sendFailed
	t.sendFailed = err != nil
	t.mu.Unlock()
	switch {
	case err != nil && !was:
		t.logger.Error("Heartbeat not sent (logged once until one is sent again)", err, nil)
	case err == nil && was:
		t.logger.Info("Heartbeats sent again", nil)
	}
}

// beat publishes the own heartbeat (a goodbye when leaving).
func (t *Tracker) beat(ctx context.Context, leaving bool) error {
	ready := true
	if t.cfg.Ready != nil {
		ready = t.cfg.Ready()
	}
	var load json.RawMessage
	if t.cfg.Load != nil {
		if v := t.cfg.Load(); v != nil {
			raw, err := wire.JSON(v)
			if err != nil {
				t.logger.Debug("Load not encodable, omitted", watermill.LogFields{"error": err.Error()})
			} else {
				load = raw
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	now := time.Now()
	t.mu.Lock()
	readyChanged := t.ready != ready
	t.ready, t.load = ready, load
	t.memory = MemoryUsage{RSS: int64(ms.Sys), HeapTotal: int64(ms.HeapSys), HeapUsed: int64(ms.HeapAlloc)}
	self := t.selfLocked(now)
	if readyChanged {
		t.publishLocked(now)
	}
	t.mu.Unlock()
	self.Leaving = leaving
	payload, err := encodeBody(self)
	if err != nil {
		return fmt.Errorf("peerstatus: encode heartbeat: %w", err)
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.SetContext(ctx)
	if err := t.cfg.Publisher.Publish(AliveTopic(t.cfg.Service), msg); err != nil {
		t.metrics.heartbeats.WithLabelValues(t.cfg.Service, "send_failed").Inc()
		return fmt.Errorf("peerstatus: heartbeat: %w", err)
	}
	t.metrics.heartbeats.WithLabelValues(t.cfg.Service, "sent").Inc()
	return nil
}
