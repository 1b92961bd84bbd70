package peerstatus

import "time"

// table is the peer table without the own instance: pure bookkeeping, no locking,
// no I/O (the Tracker holds its lock around every call).
type table struct {
	peers map[string]Peer
	// A peer becomes Suspect after suspectAfter+0.5 of its periods without a heartbeat
	// and Gone after goneAfter+0.5 (the half period absorbs scheduling jitter).
	suspectAfter, goneAfter int
}

func newTable(suspectAfter, goneAfter int) table {
	return table{peers: map[string]Peer{}, suspectAfter: suspectAfter, goneAfter: goneAfter}
}

// limit returns how long a peer with period interval may stay silent for k missed beats.
func limit(interval time.Duration, k int) time.Duration {
	return time.Duration(k)*interval + interval/2
}

// observe records heartbeat p received at now. It returns p as recorded (State and
// LastSeen set) and the change it makes, if any. A goodbye (Leaving) removes the peer at
// once and is recorded as Gone.
func (tb *table) observe(p Peer, now time.Time) (Peer, Change, bool) {
	prev, known := tb.peers[p.ID]
	p.LastSeen = now
	if p.Leaving {
		p.State = Gone
		if !known {
			return p, Change{}, false
		}
		delete(tb.peers, p.ID)
		return p, Change{Kind: Left, Peer: p, Previous: prev}, true
	}
	p.State = Alive
	tb.peers[p.ID] = p
	switch {
	case !known:
		return p, Change{Kind: Joined, Peer: p}, true
	case !sameStanding(prev, p):
		return p, Change{Kind: Updated, Peer: p, Previous: prev}, true
	}
	return p, Change{}, false
}

// sweep moves silent peers to Suspect or removes them (Gone) and returns the changes.
func (tb *table) sweep(now time.Time) []Change {
	var out []Change
	for id, p := range tb.peers {
		silent := now.Sub(p.LastSeen)
		switch {
		case silent > limit(p.Interval, tb.goneAfter):
			delete(tb.peers, id)
			gone := p
			gone.State = Gone
			out = append(out, Change{Kind: Left, Peer: gone, Previous: p})
		case silent > limit(p.Interval, tb.suspectAfter) && p.State == Alive:
			s := p
			s.State = Suspect
			tb.peers[id] = s
			out = append(out, Change{Kind: Updated, Peer: s, Previous: p})
		}
	}
	return out
}

// snapshot returns the peers ordered by id.
func (tb *table) snapshot() []Peer {
	out := make([]Peer, 0, len(tb.peers))
	for _, p := range tb.peers {
		out = append(out, p)
	}
	return sortPeers(out)
}

// counts returns how many peers are alive and suspect (the own instance excluded).
func (tb *table) counts() (alive, suspect int) {
	for _, p := range tb.peers {
		if p.State == Suspect {
			suspect++
		} else {
			alive++
		}
	}
	return alive, suspect
}

// leader returns the peer that claims leadership with the highest term (latest heartbeat
// on a tie), if any.
func (tb *table) leader() (Peer, bool) {
	var best Peer
	found := false
	for _, p := range tb.peers {
		if !p.IsLeader {
			continue
		}
		if !found || p.Term > best.Term || (p.Term == best.Term && p.LastSeen.After(best.LastSeen)) {
			best, found = p, true
		}
	}
	return best, found
}
