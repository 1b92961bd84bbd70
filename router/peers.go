package router

// Peer status and the leader election of the Service (packages peerstatus and
// patterns/election). Like every Node micromessaging service, each instance heartbeats
// on internal.<service>.peer.alive, answers peer.alive.req and takes part in its
// service's election on internal.<service>.lock.

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/patterns/election"
	"github.com/micromessaging/micromessaging/peerstatus"
)

// peers runs the Service's Tracker and Elector from Connect to Close.
type peers struct {
	tracker *peerstatus.Tracker
	elector *election.Elector
	logger  watermill.LoggerAdapter

	mu      sync.Mutex
	started bool
	closed  bool
	wg      sync.WaitGroup
}

func newPeers(service, id string, cfg Config, t *transport, ready func() bool) (*peers, error) {
	tr, err := peerstatus.New(peerstatus.Config{
		Service: service, InstanceID: id,
		Publisher: t.events, Subscriber: t.internalSub,
		Interval: cfg.Heartbeat, Ready: ready, Load: cfg.Load,
		Logger: cfg.Logger, Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, err
	}
	el, err := election.New(election.Config{
		Tracker: tr, Locker: t.subConn, RetryInterval: cfg.LeaderRetry,
		OnStepUp: cfg.OnStepUp, OnStepDown: cfg.OnStepDown,
		Logger: cfg.Logger, Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, err
	}
	return &peers{tracker: tr, elector: el, logger: cfg.Logger}, nil
}

// start runs the Tracker and the Elector, once, unless close ran first (Connect calls
// it after dialing).
func (p *peers) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	run := func(what string, fn func(context.Context) error) {
		defer p.wg.Done()
		err := fn(context.Background())
		if err != nil && !errors.Is(err, peerstatus.ErrClosed) && !errors.Is(err, election.ErrClosed) {
			p.logger.Error(what+" stopped", err, nil)
		}
	}
	p.wg.Add(2)
	go run("peer status", p.tracker.Run)
	go run("election", p.elector.Run)
}

// close stops the Elector first (a leader releases the lock and announces it), then the
// Tracker (goodbye heartbeat), and waits for both; call it before the transport closes.
func (p *peers) close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := errors.Join(p.elector.Close(), p.tracker.Close())
	p.wg.Wait()
	return err
}

// IsLeader reports whether this instance leads its service now (cheap).
func (s *Service) IsLeader() bool { return s.peers.elector.IsLeader() }

// Leader returns the instance id of the service's leader as known here ("" while unknown).
func (s *Service) Leader() string { return s.peers.elector.Leader() }

// Leadership is a latest-value channel of the election state (IsLeader, LeaderID, Term).
func (s *Service) Leadership() <-chan election.State { return s.peers.elector.Changes() }

// Leading returns, while this instance leads, a context cancelled when it stops leading
// and the term (to fence side effects); otherwise election.ErrNotLeader.
func (s *Service) Leading() (context.Context, uint64, error) { return s.peers.elector.Leading() }

// HandleLeader consumes topic of subscriber with h only while this instance leads
// (election.Elector.AddConsumerHandler on the Service's router).
func (s *Service) HandleLeader(name, topic string, subscriber message.Subscriber, h message.NoPublishHandlerFunc) {
	s.peers.elector.AddConsumerHandler(s.wm, name, topic, subscriber, h)
}

// Peers returns the members of this service as known here (this instance included).
func (s *Service) Peers() []peerstatus.Peer { return s.peers.tracker.Peers() }

// PeerChanges is a latest-value channel of Peers after every join, leave or change.
func (s *Service) PeerChanges() <-chan []peerstatus.Peer { return s.peers.tracker.Changes() }

// Status asks the instances of service (any service, Go or Node) for their status, like
// Node's getStatus; see peerstatus.Tracker.Status.
func (s *Service) Status(ctx context.Context, service string) (peerstatus.Status, error) {
	return s.peers.tracker.Status(ctx, service)
}

// Elector and Tracker give the underlying components (metrics, hooks, Observe).
func (s *Service) Elector() *election.Elector   { return s.peers.elector }
func (s *Service) Tracker() *peerstatus.Tracker { return s.peers.tracker }
