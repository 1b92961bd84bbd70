package election

import "sync"

// latest is a channel that holds only the newest value: set replaces an unread value,
// so the sender never blocks and a slow reader sees the current state, not a backlog.
type latest[T any] struct {
	mu sync.Mutex
	ch chan T
}

func newLatest[T any]() *latest[T] { return &latest[T]{ch: make(chan T, 1)} }

func (l *latest[T]) set(v T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ch:
	default:
	}
	l.ch <- v // cannot block: the buffer is empty and only set (under mu) fills it
}
