// Package latest provides a channel that holds only the newest value, for state that
// long-lived loops publish to readers they must never wait for (leadership, peer tables).
package latest

import "sync"

// Value is a channel of capacity one whose Set replaces an unread value: the sender never
// blocks and a slow reader sees the current state, not a backlog. Safe for concurrent use.
type Value[T any] struct {
	mu sync.Mutex
	ch chan T
}

// New returns an empty Value.
func New[T any]() *Value[T] { return &Value[T]{ch: make(chan T, 1)} }

// Set makes v the value a reader receives next, dropping an unread older value.
func (l *Value[T]) Set(v T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.ch:
	default:
	}
	l.ch <- v // cannot block: the buffer is empty and only Set (under mu) fills it
}

// C returns the receive side.
func (l *Value[T]) C() <-chan T { return l.ch }
