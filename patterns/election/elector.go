package election

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/internal/latest"
	"github.com/micromessaging/micromessaging/internal/lifecycle"
	"github.com/micromessaging/micromessaging/peerstatus"
	"github.com/micromessaging/micromessaging/wire"
)

var (
	// ErrNotLeader: the operation needs leadership and this instance does not lead (or
	// no longer leads in the term the operation started in).
	ErrNotLeader = errors.New("election: not the leader")
	// ErrClosed is returned by Run after Close.
	ErrClosed = errors.New("election: elector closed")
	// ErrRunning is returned by a second call of Run.
	ErrRunning = errors.New("election: Run already called")
	// ErrLockHeld is what a Locker may return when another instance holds the lock
	// (IsLockHeld reports true for it and for any error that wraps it).
	ErrLockHeld error = lockHeldError{}
)

type lockHeldError struct{}

func (lockHeldError) Error() string  { return "election: the lock is held by another instance" }
func (lockHeldError) LockHeld() bool { return true }

// IsLockHeld reports whether err says that another instance holds the lock: err, or an
// error it wraps, has a method LockHeld() bool that returns true (as ErrLockHeld and
// *rabbitmq.LockHeldError do).
func IsLockHeld(err error) bool {
	var h interface{ LockHeld() bool }
	return errors.As(err, &h) && h.LockHeld()
}

// Locker takes the election lock. *rabbitmq.Connection implements it with the exclusive
// queue internal.<service>.lock, held until released or until its connection closes.
type Locker interface {
	// TryLock makes one attempt to take the lock called name and returns without
	// waiting for it to be free. On success the lock is held until release is called
	// or lost is closed (the holder's channel or connection closed). When another
	// instance holds the lock, err satisfies IsLockHeld. ctx bounds the attempt only.
	// release gives the lock up; it is idempotent and is also called after lost, before
	// the next TryLock, to clean up.
	TryLock(ctx context.Context, name string) (lost <-chan struct{}, release func(context.Context) error, err error)
}

// State is what this instance knows about the leadership of its service.
type State struct {
	IsLeader bool   // this instance leads
	LeaderID string // instance id of the leader; "" while unknown
	// Term of the leadership: chosen by a Go leader when it takes the lock, greater
	// than every term it heard of; learned by followers from the leader's heartbeats.
	// 0 when unknown or when the leader sends none (a Node leader).
	Term uint64
}

// Reason says why a leader stepped down.
type Reason int

const (
	// LockLost: the lock's channel or the connection closed (for example the broker
	// connection was lost); the instance stepped down as soon as it noticed.
	LockLost Reason = iota
	// Superseded: another Go instance leads in a higher term, so this one lost the lock
	// without noticing; it stepped down and released what it still held.
	Superseded
	// Stopped: Run ended (ctx cancelled or Close); the lock was released and a
	// heartbeat with isMaster:false announced it.
	Stopped
)

func (r Reason) String() string {
	switch r {
	case LockLost:
		return "lock_lost"
	case Superseded:
		return "superseded"
	case Stopped:
		return "stopped"
	}
	return "unknown"
}

// StepUp is passed to Config.OnStepUp.
type StepUp struct {
	Term uint64
	// Context is cancelled the moment this instance stops leading (before OnStepDown
	// runs): run leader-only work under it.
	Context context.Context
}

// StepDown is passed to Config.OnStepDown.
type StepDown struct {
	Term   uint64 // the term that ended
	Reason Reason
}

// Config configures an Elector. Zero values mean the defaults given per field.
type Config struct {
	// Tracker is this instance's peer status (required). The elector reads leadership
	// claims from the heartbeats it receives and makes the own heartbeats say isMaster,
	// leaderId and term. The service name and instance id are the Tracker's. Run the
	// Tracker too (the facade runs both).
	Tracker *peerstatus.Tracker
	// Locker takes the lock wire.LockQueue(service) (required): a *rabbitmq.Connection.
	// Each Elector needs a Locker of its own (exclusive queues belong to a connection).
	Locker Locker
	// RetryInterval is how often a follower tries the lock (each wait is 80-120 % of it);
	// 0 = 500 ms. When the leader process dies its lock is free at once, so a follower
	// takes over within about one interval. Each failed attempt costs the broker a
	// channel open and a 405 channel error (which RabbitMQ logs).
	RetryInterval time.Duration
	// AskInterval is the least time between two peer.alive.req the elector sends when a
	// lock attempt failed and it does not know the leader yet; 0 = 2 s.
	AskInterval time.Duration

	// OnStepUp, if set, runs after this instance became leader; OnStepDown after it
	// stopped leading. Both run on the Elector's hook goroutine, one call at a time, in
	// the order of the transitions, never under a lock; a slow hook delays later hooks
	// and the start and stop of leader-only handlers, never the election itself.
	OnStepUp   func(StepUp)
	OnStepDown func(StepDown)

	// Logger; nil = watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer for the metrics; nil = no metrics are registered.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.RetryInterval == 0 {
		c.RetryInterval = 500 * time.Millisecond
	}
	if c.AskInterval == 0 {
		c.AskInterval = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Tracker == nil {
		errs = append(errs, errors.New("election: Tracker is required"))
	}
	if c.Locker == nil {
		errs = append(errs, errors.New("election: Locker is required"))
	}
	if c.RetryInterval < 0 {
		errs = append(errs, fmt.Errorf("election: RetryInterval %v is negative", c.RetryInterval))
	}
	if c.AskInterval < 0 {
		errs = append(errs, fmt.Errorf("election: AskInterval %v is negative", c.AskInterval))
	}
	return errors.Join(errs...)
}

const (
	releaseTimeout = 2 * time.Second  // giving the lock up at step-down
	stopTimeout    = 30 * time.Second // waiting for a leader-only handler to stop
	closeTimeout   = 10 * time.Second // Close waiting for Run
)

// Elector runs the election of one service for this instance. It is safe for
// concurrent use.
type Elector struct {
	cfg      Config
	tracker  *peerstatus.Tracker
	id       string
	service  string
	lockName string
	logger   watermill.LoggerAdapter
	metrics  *metrics

	isLeader atomic.Bool

	mu           sync.Mutex
	state        State
	maxTerm      uint64 // highest term held or heard of
	leaderCtx    context.Context
	leaderCancel context.CancelFunc
	superseder   State // the leader in a higher term that made this one step down
	lastAsk      time.Time
	warned       map[string]bool // rival claims already logged
	hurryUntil   time.Time       // retry ten times as often until then (the leader just left)
	failing      bool            // the last attempt failed with an error (log transitions only)

	changes   *latest.Value[State]
	wake      chan struct{} // try the lock now
	supersede chan struct{} // a higher term leads: step down

	fx       *effects
	hmu      sync.Mutex
	handlers []*leaderHandler
	active   []activeHandler
	hwg      sync.WaitGroup
	runCtx   context.Context

	life lifecycle.Runner
}

// New returns an Elector for cfg. It does no I/O and starts no goroutine; call Run.
func New(cfg Config) (*Elector, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	svc := cfg.Tracker.Service()
	e := &Elector{
		cfg: cfg, tracker: cfg.Tracker, id: cfg.Tracker.ID(), service: svc,
		lockName: wire.LockQueue(svc),
		logger: cfg.Logger.With(watermill.LogFields{
			"component": "election", "service": svc, "instance_id": cfg.Tracker.ID(),
		}),
		metrics:   m,
		warned:    map[string]bool{},
		changes:   latest.New[State](),
		wake:      make(chan struct{}, 1),
		supersede: make(chan struct{}, 1),
		fx:        newEffects(),
	}
	return e, nil
}

// ID is this instance's id (the Tracker's).
func (e *Elector) ID() string { return e.id }

// IsLeader reports whether this instance leads now. It is cheap (an atomic load). It
// turns false the moment the lock is known to be lost, before any hook runs.
func (e *Elector) IsLeader() bool { return e.isLeader.Load() }

// Leader returns the id of the current leader as known here ("" while unknown).
func (e *Elector) Leader() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state.LeaderID
}

// Term returns the term of the current leadership as known here.
func (e *Elector) Term() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state.Term
}

// State returns what this instance knows about the leadership.
func (e *Elector) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

// Changes returns a latest-value channel of State: after every change it holds the
// newest State, replacing an unread older one, so the election never waits for its
// reader. Never closed.
func (e *Elector) Changes() <-chan State { return e.changes.C() }

// Leading returns, while this instance leads, a context that is cancelled the moment
// it stops leading and the term; otherwise ErrNotLeader. Use the term to fence side
// effects (a store that remembers the highest term it saw can refuse older ones).
func (e *Elector) Leading() (context.Context, uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.state.IsLeader {
		return nil, 0, ErrNotLeader
	}
	return e.leaderCtx, e.state.Term, nil
}

// Run takes part in the election until ctx ends or Close is called: it tries the lock
// at once and then, while following, every RetryInterval; it leads while it holds the
// lock. When it stops while leading it releases the lock and sends a heartbeat with
// isMaster:false, so other Go instances take over at once. It returns nil after an
// orderly stop. Run may be called once.
func (e *Elector) Run(ctx context.Context) error {
	ctx, finish, err := e.life.Start(ctx)
	switch {
	case errors.Is(err, lifecycle.ErrClosed):
		return ErrClosed
	case err != nil:
		return ErrRunning
	}
	defer finish()

	e.hmu.Lock()
	e.runCtx = ctx
	e.hmu.Unlock()
	stopObserving := e.tracker.Observe(e.onPeer)
	defer stopObserving()
	for _, p := range e.tracker.Peers() { // what the Tracker heard before
		if !p.Self {
			e.onPeer(p)
		}
	}
	e.mu.Lock()
	e.tracker.SetLeadership(peerstatus.Leadership(e.state))
	e.mu.Unlock()
	e.metrics.isLeader.WithLabelValues(e.service).Set(0)

	var fxDone sync.WaitGroup
	fxDone.Add(1)
	go func() {
		defer fxDone.Done()
		e.runEffects()
	}()
	e.logger.Info("Election running", watermill.LogFields{"lock": e.lockName, "retry_interval": e.cfg.RetryInterval.String()})

	var lost <-chan struct{}
	var release func(context.Context) error
	retry := time.NewTimer(0)
	defer retry.Stop()
loop:
	for {
		if lost == nil {
			select {
			case <-ctx.Done():
				break loop
			case <-retry.C:
			case <-e.wake:
			}
			lost, release = e.attempt(ctx)
			if lost == nil {
				retry.Reset(e.jitter())
			}
			continue
		}
		select {
		case <-ctx.Done():
			break loop
		case <-lost:
			e.stepDown(LockLost)
			e.release(release)
			lost, release = nil, nil
			retry.Reset(0) // at once: a reconnect may already be under way
		case <-e.supersede:
			e.stepDown(Superseded)
			e.release(release)
			lost, release = nil, nil
			retry.Reset(e.jitter())
		}
	}
	if lost != nil {
		// Step down first: no instance may take the lock while this one still says it
		// leads.
		e.stepDown(Stopped)
		e.release(release)
		bctx, bcancel := context.WithTimeout(context.Background(), releaseTimeout)
		if err := e.tracker.Beat(bctx); err != nil {
			e.logger.Info("Step-down not announced", watermill.LogFields{"error": err.Error()})
		}
		bcancel()
	}
	e.fx.close()
	fxDone.Wait()
	e.hwg.Wait()
	e.logger.Info("Election stopped", nil)
	return nil
}

// Close stops Run (which steps down and releases the lock if leading) and waits for it,
// at most 10 s. It is idempotent; after Close, Run returns ErrClosed.
func (e *Elector) Close() error {
	if err := e.life.Close(closeTimeout); err != nil {
		return errors.New("election: Close timed out waiting for Run to stop")
	}
	return nil
}

func (e *Elector) jitter() time.Duration {
	d := e.cfg.RetryInterval
	e.mu.Lock()
	if time.Now().Before(e.hurryUntil) {
		d /= 10
	}
	e.mu.Unlock()
	return d*4/5 + rand.N(d*2/5+1)
}

// attempt tries the lock once; on success this instance leads.
func (e *Elector) attempt(ctx context.Context) (<-chan struct{}, func(context.Context) error) {
	actx, cancel := context.WithTimeout(ctx, max(2*time.Second, 4*e.cfg.RetryInterval))
	defer cancel()
	lost, release, err := e.cfg.Locker.TryLock(actx, e.lockName)
	switch {
	case err == nil:
		e.metrics.attempts.WithLabelValues(e.service, "acquired").Inc()
		e.stepUp()
		return lost, release
	case IsLockHeld(err):
		e.metrics.attempts.WithLabelValues(e.service, "held").Inc()
		e.setFailing(nil)
		e.maybeAsk(actx)
	default:
		e.metrics.attempts.WithLabelValues(e.service, "failed").Inc()
		if ctx.Err() == nil {
			e.setFailing(err)
		}
	}
	return nil, nil
}

func (e *Elector) setFailing(err error) {
	e.mu.Lock()
	was := e.failing
	e.failing = err != nil
	e.mu.Unlock()
	switch {
	case err != nil && !was:
		e.logger.Info("Cannot try the election lock (logged once until it works again)", watermill.LogFields{"error": err.Error()})
	case err == nil && was:
		e.logger.Info("Election lock reachable again", nil)
	}
}

// maybeAsk sends a peer.alive.req when the leader is unknown (a Node leader would
// otherwise tell only at its next heartbeat, up to 10 s later).
func (e *Elector) maybeAsk(ctx context.Context) {
	e.mu.Lock()
	ask := e.state.LeaderID == "" && time.Since(e.lastAsk) >= e.cfg.AskInterval
	if ask {
		e.lastAsk = time.Now()
	}
	e.mu.Unlock()
	if ask {
		if err := e.tracker.Ask(ctx); err != nil {
			e.logger.Debug("Could not ask for the leader", watermill.LogFields{"error": err.Error()})
		}
	}
}

func (e *Elector) release(release func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := release(ctx); err != nil {
		e.logger.Info("Election lock not released cleanly", watermill.LogFields{"error": err.Error()})
	}
}

func (e *Elector) stepUp() {
	e.mu.Lock()
	defer e.mu.Unlock()
	// Greater than every term heard of, and than the clock in ms: a leader that never
	// heard of its predecessor still picks a greater term than it (unless clocks differ).
	term := max(e.maxTerm+1, uint64(time.Now().UnixMilli()))
	e.maxTerm = term
	e.leaderCtx, e.leaderCancel = context.WithCancel(context.Background())
	e.isLeader.Store(true)
	e.setStateLocked(State{IsLeader: true, LeaderID: e.id, Term: term})
	e.tracker.Announce()
	e.fx.push(effect{up: &StepUp{Term: term, Context: e.leaderCtx}})
	e.logger.Info("Leading", watermill.LogFields{"term": term})
}

func (e *Elector) stepDown(reason Reason) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.state.IsLeader {
		return
	}
	e.isLeader.Store(false)
	e.leaderCancel()
	term := e.state.Term
	next := State{Term: term}
	if reason == Superseded {
		next = e.superseder // the new leader with its own term, never with the ended one
	}
	e.setStateLocked(next)
	e.tracker.Announce()
	e.fx.push(effect{down: &StepDown{Term: term, Reason: reason}})
	e.logger.Info("Stepped down", watermill.LogFields{"term": term, "reason": reason.String()})
}

// setStateLocked records s and tells the Tracker, the Changes channel and the metrics.
// The lock order is e.mu, then the Tracker's (the Tracker never calls the Elector while
// holding its own).
func (e *Elector) setStateLocked(s State) {
	prev := e.state
	if s == prev {
		return
	}
	e.state = s
	e.tracker.SetLeadership(peerstatus.Leadership(s))
	e.changes.Set(s)
	if s.LeaderID != "" && s.LeaderID != prev.LeaderID {
		e.metrics.changes.WithLabelValues(e.service).Inc()
	}
	e.metrics.term.WithLabelValues(e.service).Set(float64(s.Term))
	if s.IsLeader != prev.IsLeader {
		v := 0.0
		if s.IsLeader {
			v = 1
		}
		e.metrics.isLeader.WithLabelValues(e.service).Set(v)
	}
}

// wakeUp makes a follower try the lock now, and for the next two retry intervals ten
// times as often: the leader just left, and its lock may be freed a moment later (a
// goodbye heartbeat can overtake the lock's release when a process shuts down).
func (e *Elector) wakeUp() {
	e.hurryUntil = time.Now().Add(2 * e.cfg.RetryInterval)
	e.poke()
}

// poke makes a follower try the lock now.
func (e *Elector) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// onPeer learns the leader from the peers' heartbeats; it runs on the Tracker's
// receiving goroutine and never blocks.
func (e *Elector) onPeer(p peerstatus.Peer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.maxTerm = max(e.maxTerm, p.Term)
	cur := e.state
	switch {
	case p.State == peerstatus.Gone || p.Leaving:
		if !cur.IsLeader && p.ID == cur.LeaderID {
			e.logger.Info("Leader gone", watermill.LogFields{"leader_id": p.ID})
			e.setStateLocked(State{Term: cur.Term})
			e.wakeUp()
		}
	case p.State == peerstatus.Suspect:
		if p.ID == cur.LeaderID {
			e.poke() // no hurry: it may be alive
		}
	case p.IsLeader && cur.IsLeader:
		if p.Term > cur.Term {
			// Two Go instances cannot both hold the lock: the one with the lower term
			// lost it without noticing yet.
			e.logger.Error("Another instance leads in a higher term: stepping down", ErrNotLeader,
				watermill.LogFields{"rival_id": p.ID, "rival_term": p.Term, "term": cur.Term})
			e.superseder = State{LeaderID: p.ID, Term: p.Term}
			select {
			case e.supersede <- struct{}{}:
			default:
			}
		} else if !e.warned[p.ID] {
			e.warned[p.ID] = true
			e.logger.Error("Another instance claims leadership while this one holds the lock", ErrNotLeader,
				watermill.LogFields{"rival_id": p.ID, "rival_term": p.Term, "term": cur.Term})
		}
	case p.IsLeader:
		// Terms order Go leaders; a Node leader sends none (0): then the newest claim wins.
		if cur.LeaderID == "" || p.ID == cur.LeaderID || p.Term > cur.Term || p.Term == 0 || cur.Term == 0 {
			e.setStateLocked(State{LeaderID: p.ID, Term: p.Term})
		}
	case p.ID == cur.LeaderID && !cur.IsLeader:
		// The leader says it no longer leads (a Go leader stepping down cleanly).
		e.setStateLocked(State{Term: cur.Term})
		e.wakeUp()
	}
}
