package peerstatus

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// Status is the answer of Tracker.Status: the members of a service that answered.
type Status struct {
	Service string
	// Members answered, ordered by start time (oldest first), then id. State is Alive,
	// LastSeen the time the answer arrived.
	Members []Peer
	// LeaderID is the id of the member that says it leads (isMaster) with the highest
	// term, else the leaderId most members report; "" when no member knows a leader.
	LeaderID string
}

// Status asks the instances of service (Go or Node, any service) for their heartbeats,
// like Node's getStatus: it listens to internal.<service>.peer.alive, publishes
// internal.<service>.peer.alive.req and collects the answers. It returns as soon as as
// many members answered as the largest knownPeers an answer reported (at once for a lone
// instance, or when the first answer comes from an instance that knows no other yet),
// else after StatusWait. It returns ErrNoPeers when nobody answered, and
// ctx.Err() when ctx ends first. Status does not need Run, and is safe for concurrent
// use.
func (t *Tracker) Status(ctx context.Context, service string) (Status, error) {
	if err := validService(service); err != nil {
		return Status{}, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, err := t.cfg.Subscriber.Subscribe(sctx, AliveTopic(service))
	if err != nil {
		return Status{}, fmt.Errorf("peerstatus: status of %s: subscribe: %w", service, err)
	}
	if err := t.ask(ctx, service); err != nil {
		return Status{}, err
	}
	timer := time.NewTimer(t.cfg.StatusWait)
	defer timer.Stop()

	got := map[string]Peer{}
	expected := 0
collect:
	for {
		select {
		case <-ctx.Done():
			return Status{}, ctx.Err()
		case <-timer.C:
			break collect
		case msg, ok := <-msgs:
			if !ok {
				if ctx.Err() != nil {
					return Status{}, ctx.Err()
				}
				return Status{}, fmt.Errorf("peerstatus: status of %s: %w", service, ErrSubscriptionClosed)
			}
			msg.Ack()
			p, err := decodeBody(msg.Payload)
			if err != nil {
				continue
			}
			if p.Leaving {
				delete(got, p.ID)
				continue
			}
			p.State, p.LastSeen, p.Self = Alive, time.Now(), p.ID == t.cfg.InstanceID
			got[p.ID] = p
			expected = max(expected, p.KnownPeers)
			if len(got) >= expected {
				break collect
			}
		}
	}
	if len(got) == 0 {
		return Status{}, fmt.Errorf("%w: %s (waited %v)", ErrNoPeers, service, t.cfg.StatusWait)
	}
	return newStatus(service, got), nil
}

func newStatus(service string, got map[string]Peer) Status {
	s := Status{Service: service, Members: make([]Peer, 0, len(got))}
	votes := map[string]int{}
	var leader *Peer
	for _, p := range got {
		s.Members = append(s.Members, p)
		if p.LeaderID != "" {
			votes[p.LeaderID]++
		}
	}
	sort.Slice(s.Members, func(i, j int) bool {
		a, b := s.Members[i], s.Members[j]
		if !a.StartedAt.Equal(b.StartedAt) {
			return a.StartedAt.Before(b.StartedAt)
		}
		return a.ID < b.ID
	})
	for i := range s.Members {
		p := &s.Members[i]
		if p.IsLeader && (leader == nil || p.Term > leader.Term) {
			leader = p
		}
	}
	if leader != nil {
		s.LeaderID = leader.ID
		return s
	}
	best := 0
	for id, n := range votes {
		if n > best || (n == best && id < s.LeaderID) {
			s.LeaderID, best = id, n
		}
	}
	return s
}
