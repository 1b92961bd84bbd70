package peerstatus

import (
	"testing"
	"time"
)

func TestTableLifecycle(t *testing.T) {
	tb := newTable(2, 4)
	t0 := time.Unix(1000, 0)
	p := Peer{ID: "a", Service: "s", Interval: time.Second, Ready: true}

	if _, c, ok := tb.observe(p, t0); !ok || c.Kind != Joined || c.Peer.State != Alive {
		t.Fatalf("first heartbeat: %v %+v", ok, c)
	}
	if _, _, ok := tb.observe(p, t0.Add(time.Second)); ok {
		t.Fatal("a plain repeat heartbeat is a change")
	}
	q := p
	q.Uptime, q.KnownPeers, q.Memory.RSS = time.Hour, 7, 99
	if _, _, ok := tb.observe(q, t0.Add(1500*time.Millisecond)); ok {
		t.Fatal("per-heartbeat figures counted as a change")
	}
	q.IsLeader, q.Term = true, 3
	if _, c, ok := tb.observe(q, t0.Add(2*time.Second)); !ok || c.Kind != Updated || !c.Peer.IsLeader || c.Previous.IsLeader {
		t.Fatalf("leadership change: %v %+v", ok, c)
	}
	if l, ok := tb.leader(); !ok || l.ID != "a" {
		t.Fatalf("leader = %+v %v", l, ok)
	}
	last := t0.Add(2 * time.Second)

	// 2.5 periods of silence: still alive; just over: suspect; 4.5: gone.
	if c := tb.sweep(last.Add(2500 * time.Millisecond)); len(c) != 0 {
		t.Fatalf("sweep at 2.5 periods: %+v", c)
	}
	c := tb.sweep(last.Add(2600 * time.Millisecond))
	if len(c) != 1 || c[0].Kind != Updated || c[0].Peer.State != Suspect {
		t.Fatalf("sweep at 2.6 periods: %+v", c)
	}
	if c := tb.sweep(last.Add(3 * time.Second)); len(c) != 0 {
		t.Fatalf("suspect reported twice: %+v", c)
	}
	if a, s := tb.counts(); a != 0 || s != 1 {
		t.Fatalf("counts = %d, %d", a, s)
	}
	// A heartbeat brings it back.
	if _, c, ok := tb.observe(q, last.Add(3*time.Second)); !ok || c.Kind != Updated || c.Peer.State != Alive {
		t.Fatalf("back: %v %+v", ok, c)
	}
	last = last.Add(3 * time.Second)
	c = tb.sweep(last.Add(4600 * time.Millisecond))
	if len(c) != 1 || c[0].Kind != Left || c[0].Peer.State != Gone || len(tb.peers) != 0 {
		t.Fatalf("sweep at 4.6 periods: %+v", c)
	}
	if _, ok := tb.leader(); ok {
		t.Fatal("a gone peer is still leader")
	}
}

func TestTableUsesEachPeersInterval(t *testing.T) {
	tb := newTable(2, 4)
	t0 := time.Unix(1000, 0)
	tb.observe(Peer{ID: "go", Interval: 100 * time.Millisecond}, t0)
	tb.observe(Peer{ID: "node", Interval: NodeInterval}, t0)
	c := tb.sweep(t0.Add(time.Second))
	if len(c) != 1 || c[0].Peer.ID != "go" || c[0].Kind != Left {
		t.Fatalf("after 1 s: %+v", c)
	}
	if c := tb.sweep(t0.Add(20 * time.Second)); len(c) != 0 {
		t.Fatalf("node peer suspected after 2 of its periods: %+v", c)
	}
	if c := tb.sweep(t0.Add(26 * time.Second)); len(c) != 1 || c[0].Peer.State != Suspect {
		t.Fatalf("after 26 s: %+v", c)
	}
}

func TestTableGoodbye(t *testing.T) {
	tb := newTable(2, 4)
	t0 := time.Unix(1000, 0)
	bye := Peer{ID: "a", Leaving: true, Interval: time.Second}
	if rec, _, ok := tb.observe(bye, t0); ok || rec.State != Gone {
		t.Fatal("goodbye of an unknown peer is a change")
	}
	tb.observe(Peer{ID: "a", Interval: time.Second}, t0)
	rec, c, ok := tb.observe(bye, t0.Add(time.Millisecond))
	if !ok || c.Kind != Left || rec.State != Gone || len(tb.peers) != 0 {
		t.Fatalf("goodbye: %v %+v", ok, c)
	}
}

func TestLeaderPicksHighestTerm(t *testing.T) {
	tb := newTable(2, 4)
	t0 := time.Unix(1000, 0)
	tb.observe(Peer{ID: "old", IsLeader: true, Term: 4}, t0.Add(time.Second))
	tb.observe(Peer{ID: "new", IsLeader: true, Term: 5}, t0)
	tb.observe(Peer{ID: "follower", LeaderID: "old", Term: 4}, t0)
	if l, _ := tb.leader(); l.ID != "new" {
		t.Fatalf("leader = %s", l.ID)
	}
}

func TestDiff(t *testing.T) {
	a := Peer{ID: "a", State: Alive}
	b := Peer{ID: "b", State: Alive}
	b2 := b
	b2.State = Suspect
	c := Peer{ID: "c", State: Alive}
	aSeen := a
	aSeen.LastSeen = time.Unix(5, 0)
	got := Diff([]Peer{a, b}, []Peer{aSeen, b2, c})
	if len(got) != 2 || got[0].Kind != Updated || got[0].Peer.ID != "b" || got[1].Kind != Joined || got[1].Peer.ID != "c" {
		t.Fatalf("Diff = %+v", got)
	}
	got = Diff([]Peer{a, b}, []Peer{b})
	if len(got) != 1 || got[0].Kind != Left || got[0].Peer.ID != "a" || got[0].Peer.State != Gone {
		t.Fatalf("Diff = %+v", got)
	}
}
