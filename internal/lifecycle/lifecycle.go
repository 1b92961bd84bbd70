// Package lifecycle guards the Run/Close pair of a long-running component: Run may be
// called once, Close cancels it and waits for it, bounded by a timeout, and is
// idempotent; Run after Close is refused. Callers map its errors to their own.
package lifecycle

import (
	"context"
	"errors"
	"sync"
	"time"
)

var (
	// ErrClosed is returned by Start after Close.
	ErrClosed = errors.New("lifecycle: closed")
	// ErrRunning is returned by a second Start.
	ErrRunning = errors.New("lifecycle: already started")
	// ErrTimeout is returned by Close when the run did not finish in time.
	ErrTimeout = errors.New("lifecycle: timed out waiting for the run to finish")
)

// Runner tracks one run. The zero value is ready to use; a Runner must not be copied
// after first use. Safe for concurrent use.
type Runner struct {
	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// Start begins the run: it returns a context derived from ctx that Close cancels, and
// finish, which the run must call when it has stopped everything it started (usually
// deferred; later calls do nothing). Start fails with ErrClosed after Close and with ErrRunning when it
// succeeded before.
func (r *Runner) Start(ctx context.Context) (runCtx context.Context, finish func(), err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return nil, nil, ErrClosed
	case r.started:
		return nil, nil, ErrRunning
	}
	r.started = true
	runCtx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	cancel, done := r.cancel, r.done
	return runCtx, sync.OnceFunc(func() { cancel(); close(done) }), nil
}

// Close refuses later Starts, cancels the run's context and waits until the run calls
// finish, at most timeout; then it returns ErrTimeout (and the run goes on until it
// ends). Close before Start, and every Close after the first, returns nil at once.
func (r *Runner) Close(timeout time.Duration) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return ErrTimeout
	}
}
