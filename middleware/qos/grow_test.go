package qos

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

func TestGrowsWhileSaturated(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{InitialInFlight: 2})
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	for i := 0; i < 5; i++ {
		go func() { _, _ = mw(message.NewMessage("m", nil)) }()
	}
	eventually(t, "3 wait", func() bool { return l.global.waiting.Load() == 3 })
	l.sample(time.Now())
	if l.Limit() != 3 {
		t.Fatalf("limit %d after a saturated sample, want 3", l.Limit())
	}
	eventually(t, "2 wait", func() bool { return l.global.waiting.Load() == 2 })
	l.sample(time.Now())
	if l.Limit() != 4 {
		t.Fatalf("limit %d after a second saturated sample (waiters still queued), want 4", l.Limit())
	}
	close(h.release)
	eventually(t, "all done", func() bool { n, _ := l.InFlight(); return n == 0 })
}

// TestHandlerLatencyCount: the number of finished messages is derived from the
// admitted and in-flight counts; a baseline needs at least minLatSamples of them.
func TestHandlerLatencyCount(t *testing.T) {
	l, _, _ := newTestLimiter(t, Config{})
	l.sample(time.Now())
	h := newBlockingHandler()
	mw := l.Middleware(h.handle)
	done := make(chan struct{}, 6)
	for i := 0; i < 6; i++ {
		go func() { _, _ = mw(message.NewMessage("m", nil)); done <- struct{}{} }()
	}
	for i := 0; i < 6; i++ {
		<-h.started
	}
	time.Sleep(2 * time.Millisecond)
	for i := 0; i < 5; i++ {
		h.release <- struct{}{}
		<-done
	}
	l.sample(time.Now())
	if l.ps.baseline < 2*time.Millisecond || time.Duration(l.lastLat.Load()) < 2*time.Millisecond {
		t.Fatalf("baseline %v, last mean %v: want >= 2ms from 5 finished messages", l.ps.baseline, time.Duration(l.lastLat.Load()))
	}
	if l.prevAdmitted != 6 || l.prevInFlight != 1 {
		t.Fatalf("admitted %d in flight %d, want 6, 1", l.prevAdmitted, l.prevInFlight)
	}
	h.release <- struct{}{}
	<-done
}
