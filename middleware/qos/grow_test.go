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
