package qos

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The state of a gate packs the number of messages in flight (low countBits bits) and
// the bytes in flight (the other bits) into one word, so that both are taken with a
// single compare-and-swap and can never be seen half-updated.
const (
	countBits = 24
	countMask = 1<<countBits - 1
	// maxMsgBytes caps the bytes one message counts for, so that the packed byte total
	// cannot overflow (2^40 bytes of payload in flight is far beyond any process).
	maxMsgBytes = 1 << 34
)

// gate is a counting semaphore on messages and payload bytes with a limit that can be
// changed at any time. The fast path (nobody waiting and room left) is one load of the
// waiter count and one compare-and-swap; only callers that must wait take the mutex.
// Waiters are served in FIFO order; a message larger than the byte limit is let in when
// no other bytes are in flight, so that it cannot wait forever.
type gate struct {
	state    atomic.Uint64
	limit    atomic.Int64 // max messages in flight; 0 lets nobody in
	maxBytes uint64       // max payload bytes in flight; 0 = no limit. Fixed.
	waiting  atomic.Int64 // number of queued waiters
	waited   atomic.Bool  // someone queued since the last takeWaited (saturation)
	isClosed atomic.Bool

	mu         sync.Mutex
	head, tail *waiter
	closed     bool
}

type waiter struct {
	n          uint64
	ready      chan struct{} // capacity 1; one value when granted or closed
	granted    bool          // under gate.mu
	closed     bool          // under gate.mu
	prev, next *waiter
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ready: make(chan struct{}, 1)} }}

func newGate(limit int, maxBytes int64) *gate {
	g := &gate{}
	if maxBytes > 0 {
		g.maxBytes = uint64(maxBytes)
	}
	g.limit.Store(int64(limit))
	return g
}

func clampBytes(n int) uint64 {
	if n > maxMsgBytes {
		return maxMsgBytes
	}
	return uint64(n)
}

// tryAcquire takes one slot and n bytes if both fit.
func (g *gate) tryAcquire(n uint64) bool {
	for {
		s := g.state.Load()
		if int64(s&countMask) >= g.limit.Load() {
			return false
		}
		if g.maxBytes > 0 {
			if b := s >> countBits; b != 0 && b+n > g.maxBytes {
				return false
			}
		}
		if g.state.CompareAndSwap(s, s+1+n<<countBits) {
			return true
		}
	}
}

// acquire takes one slot and n bytes, waiting in line if needed. It returns the time
// spent waiting (0 on the fast path), ctx.Err() when ctx ends first (nothing is held
// then) or ErrClosed.
func (g *gate) acquire(ctx context.Context, n uint64) (time.Duration, error) {
	if g.waiting.Load() == 0 && g.tryAcquire(n) {
		return 0, nil
	}
	return g.acquireSlow(ctx, n)
}

func (g *gate) acquireSlow(ctx context.Context, n uint64) (time.Duration, error) {
	start := time.Now()
	w := waiterPool.Get().(*waiter)
	w.n, w.granted, w.closed = n, false, false

	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		waiterPool.Put(w)
		return 0, ErrClosed
	}
	g.push(w)
	g.waiting.Add(1)
	g.waited.Store(true)
	// A release that happened before waiting was raised did not look at the queue:
	// look now, we may be served at once.
	g.grantLocked()
	if w.granted {
		<-w.ready
		g.mu.Unlock()
		waiterPool.Put(w)
		return time.Since(start), nil
	}
	g.mu.Unlock()

	select {
	case <-w.ready:
		g.mu.Lock()
		closed := w.closed
		g.mu.Unlock()
		waiterPool.Put(w)
		if closed {
			return time.Since(start), ErrClosed
		}
		return time.Since(start), nil
	case <-ctx.Done():
	}

	g.mu.Lock()
	switch {
	case w.granted:
		// Served while we gave up: hand the slot back.
		g.mu.Unlock()
		<-w.ready
		g.release(n)
	case w.closed:
		g.mu.Unlock()
		<-w.ready
	default:
		wasHead := g.head == w
		g.unlink(w)
		g.waiting.Add(-1)
		if wasHead {
			// Those behind us may fit now (a smaller byte count).
			g.grantLocked()
		}
		g.mu.Unlock()
	}
	waiterPool.Put(w)
	return time.Since(start), ctx.Err()
}

// release gives back one slot and n bytes and serves waiters that fit now.
func (g *gate) release(n uint64) {
	g.state.Add(^(1 + n<<countBits - 1))
	if g.waiting.Load() > 0 {
		g.mu.Lock()
		g.grantLocked()
		g.mu.Unlock()
	}
}

// setLimit changes the limit; waiters that fit under a higher limit are served.
func (g *gate) setLimit(limit int) {
	if g.isClosed.Load() {
		return
	}
	if g.limit.Swap(int64(limit)) < int64(limit) && g.waiting.Load() > 0 {
		g.mu.Lock()
		g.grantLocked()
		g.mu.Unlock()
	}
}

// close fails every waiter and every later acquire that has to wait with ErrClosed.
// Holders may still release.
func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.isClosed.Store(true)
	g.limit.Store(0)
	for w := g.head; w != nil; w = g.head {
		g.unlink(w)
		g.waiting.Add(-1)
		w.closed = true
		w.ready <- struct{}{}
	}
}

// inFlight returns the messages and payload bytes in flight.
func (g *gate) inFlight() (int, int64) {
	s := g.state.Load()
	return int(s & countMask), int64(s >> countBits)
}

// takeWaited reports whether any acquire had to wait since the previous call.
func (g *gate) takeWaited() bool { return g.waited.Swap(false) }

func (g *gate) grantLocked() {
	for w := g.head; w != nil; w = g.head {
		if !g.tryAcquire(w.n) {
			return
		}
		g.unlink(w)
		g.waiting.Add(-1)
		w.granted = true
		w.ready <- struct{}{}
	}
}

func (g *gate) push(w *waiter) {
	w.prev, w.next = g.tail, nil
	if g.tail == nil {
		g.head = w
	} else {
		g.tail.next = w
	}
	g.tail = w
}

func (g *gate) unlink(w *waiter) {
	if w.prev == nil {
		g.head = w.next
	} else {
		w.prev.next = w.next
	}
	if w.next == nil {
		g.tail = w.prev
	} else {
		w.next.prev = w.prev
	}
	w.prev, w.next = nil, nil
}
