package peerstatus

import (
	"encoding/json"
	"sort"
	"time"
)

// NodeInterval is the heartbeat period assumed for a peer that does not advertise one
// (the Node library beats every 10 s).
const NodeInterval = 10 * time.Second

// State is what this instance believes about a peer.
type State int

const (
	// Alive: a heartbeat arrived within the last SuspectAfter periods of the peer.
	Alive State = iota
	// Suspect: SuspectAfter heartbeats were missed; the peer still counts as a member
	// (knownPeers includes it) until GoneAfter heartbeats were missed.
	Suspect
	// Gone: GoneAfter heartbeats were missed, or the peer said goodbye. Gone peers are
	// removed from the table; the state is seen only in a Left change and by observers.
	Gone
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Gone:
		return "gone"
	}
	return "unknown"
}

// MemoryUsage is Node's process.memoryUsage() as sent in heartbeats. A Go instance sends
// runtime figures: rss = Sys, heapTotal = HeapSys, heapUsed = HeapAlloc, external and
// arrayBuffers 0.
type MemoryUsage struct {
	RSS          int64 `json:"rss"`
	HeapTotal    int64 `json:"heapTotal"`
	HeapUsed     int64 `json:"heapUsed"`
	External     int64 `json:"external"`
	ArrayBuffers int64 `json:"arrayBuffers"`
}

// Peer is one instance of a service as its last heartbeat described it.
type Peer struct {
	ID      string // instance id (UUID v4 for Node and Go instances)
	Service string // the "name" field: the service the instance belongs to
	Self    bool   // this instance

	State    State
	IsLeader bool   // isMaster in its last heartbeat
	LeaderID string // the leader it knows; "" while unknown
	Term     uint64 // leadership term it reported; 0 when none (Node peers)
	Ready    bool   // isReady

	StartedAt  time.Time     // zero when the peer sent none or an unreadable one
	Uptime     time.Duration // elapsedMs as reported
	LastSeen   time.Time     // when its last heartbeat arrived here
	Interval   time.Duration // heartbeat period it advertises; NodeInterval when none
	KnownPeers int           // how many members it counts, itself included

	Memory MemoryUsage
	// Load is the "load" field as the peer sent it (JSON; for Go instances the value
	// returned by Config.Load, such as the QoS state); nil when absent.
	Load json.RawMessage
	// Version is the heartbeat body version: 0 for a Node body, BodyVersion for this one.
	Version int
	// Leaving is set on the goodbye heartbeat of a Go instance that shuts down cleanly.
	Leaving bool
}

// sameStanding reports whether a and b differ only in what changes with every
// heartbeat (last seen, uptime, memory, load, knownPeers): such updates are not changes.
func sameStanding(a, b Peer) bool {
	return a.State == b.State && a.IsLeader == b.IsLeader && a.LeaderID == b.LeaderID &&
		a.Term == b.Term && a.Ready == b.Ready && a.Service == b.Service
}

// ChangeKind says how the membership changed.
type ChangeKind int

const (
	// Joined: a peer not in the table before.
	Joined ChangeKind = iota
	// Left: a peer removed from the table (gone or said goodbye).
	Left
	// Updated: a peer's state, leadership, term or readiness changed.
	Updated
)

func (k ChangeKind) String() string {
	switch k {
	case Joined:
		return "joined"
	case Left:
		return "left"
	case Updated:
		return "updated"
	}
	return "unknown"
}

// Change is one difference between two snapshots of the peer table.
type Change struct {
	Kind ChangeKind
	Peer Peer // the peer now (for Left: as last known, with State Gone)
	// Previous is the peer before the change (zero for Joined).
	Previous Peer
}

// Diff returns the changes that turn snapshot old into snapshot new, ordered by peer id.
// Peers whose only differences are per-heartbeat figures (last seen, uptime, memory,
// load, knownPeers) are not reported.
func Diff(old, new []Peer) []Change {
	before := make(map[string]Peer, len(old))
	for _, p := range old {
		before[p.ID] = p
	}
	var out []Change
	seen := make(map[string]bool, len(new))
	for _, p := range new {
		seen[p.ID] = true
		prev, ok := before[p.ID]
		switch {
		case !ok:
			out = append(out, Change{Kind: Joined, Peer: p})
		case !sameStanding(prev, p):
			out = append(out, Change{Kind: Updated, Peer: p, Previous: prev})
		}
	}
	for _, p := range old {
		if !seen[p.ID] {
			gone := p
			gone.State = Gone
			out = append(out, Change{Kind: Left, Peer: gone, Previous: p})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Peer.ID < out[j].Peer.ID })
	return out
}

// sortPeers orders a snapshot by instance id.
func sortPeers(ps []Peer) []Peer {
	sort.Slice(ps, func(i, j int) bool { return ps[i].ID < ps[j].ID })
	return ps
}
