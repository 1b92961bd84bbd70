package election

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// effect is one transition for the hook goroutine: exactly one field is set.
type effect struct {
	up    *StepUp
	down  *StepDown
	start *leaderHandler // a handler added while leading
}

// effects is an unbounded FIFO of transitions (they are rare) feeding the hook goroutine,
// so the election loop never waits for hooks or handlers.
type effects struct {
	mu     sync.Mutex
	q      []effect
	closed bool
	signal chan struct{}
}

func newEffects() *effects { return &effects{signal: make(chan struct{}, 1)} }

func (f *effects) push(e effect) {
	f.mu.Lock()
	f.q = append(f.q, e)
	f.mu.Unlock()
	select {
	case f.signal <- struct{}{}:
	default:
	}
}

// close makes take return false once the queue is drained.
func (f *effects) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	select {
	case f.signal <- struct{}{}:
	default:
	}
}

// take returns the queued effects, waiting for some; false when closed and drained.
func (f *effects) take() ([]effect, bool) {
	for {
		f.mu.Lock()
		q, closed := f.q, f.closed
		f.q = nil
		f.mu.Unlock()
		if len(q) > 0 {
			return q, true
		}
		if closed {
			return nil, false
		}
		<-f.signal
	}
}

// runEffects is the hook goroutine.
func (e *Elector) runEffects() {
	for {
		batch, ok := e.fx.take()
		if !ok {
			return
		}
		for _, fx := range batch {
			switch {
			case fx.up != nil:
				e.hmu.Lock()
				hs := append([]*leaderHandler(nil), e.handlers...)
				e.hmu.Unlock()
				for _, h := range hs {
					e.startHandler(h, fx.up.Term, fx.up.Context)
				}
				if e.cfg.OnStepUp != nil {
					e.cfg.OnStepUp(*fx.up)
				}
			case fx.down != nil:
				e.stopHandlers()
				if e.cfg.OnStepDown != nil {
					e.cfg.OnStepDown(*fx.down)
				}
			case fx.start != nil:
				if ctx, term, err := e.Leading(); err == nil {
					e.startHandler(fx.start, term, ctx)
				}
			}
		}
	}
}

// leaderHandler is a Watermill handler that runs only while this instance leads.
type leaderHandler struct {
	router         *message.Router
	name           string
	subscribeTopic string
	subscriber     message.Subscriber
	publishTopic   string
	publisher      message.Publisher // nil for consumer handlers
	fn             message.HandlerFunc
}

type activeHandler struct {
	name string
	h    *message.Handler
}

// AddHandler registers a leader-only handler, with the arguments of
// message.Router.AddHandler: each time this instance becomes leader the handler is
// added to router and started (once router runs), and each time it stops leading the
// handler is stopped, so only the leader consumes subscribeTopic. The handler sees a
// message context carrying the term (TermFromContext) and cancelled the moment the
// leadership ends; a message that reaches it after leadership ended is refused with
// ErrNotLeader (nacked, so the next leader gets it).
//
// Watermill closes a router whose handlers have all stopped: give router at least one
// handler that is not leader-only. The router must not close publisher when the handler
// stops (Watermill closes a handler's publisher then): AddHandler hands it a wrapper
// whose Close does nothing, so publisher stays yours to close.
func (e *Elector) AddHandler(router *message.Router, name, subscribeTopic string, subscriber message.Subscriber,
	publishTopic string, publisher message.Publisher, fn message.HandlerFunc) {
	e.add(&leaderHandler{router: router, name: name, subscribeTopic: subscribeTopic, subscriber: subscriber,
		publishTopic: publishTopic, publisher: publisher, fn: fn})
}

// AddConsumerHandler is AddHandler for a handler that publishes nothing, with the
// arguments of message.Router.AddConsumerHandler.
func (e *Elector) AddConsumerHandler(router *message.Router, name, subscribeTopic string, subscriber message.Subscriber,
	fn message.NoPublishHandlerFunc) {
	e.add(&leaderHandler{router: router, name: name, subscribeTopic: subscribeTopic, subscriber: subscriber,
		fn: func(msg *message.Message) ([]*message.Message, error) { return nil, fn(msg) }})
}

func (e *Elector) add(h *leaderHandler) {
	e.hmu.Lock()
	e.handlers = append(e.handlers, h)
	e.hmu.Unlock()
	if e.IsLeader() {
		e.fx.push(effect{start: h})
	}
}

// startHandler adds h to its router and runs it, once the router runs, unless the
// leadership of term ended first. It runs on the hook goroutine; the wait for the
// router happens on a goroutine of its own (joined by Run).
func (e *Elector) startHandler(h *leaderHandler, term uint64, lctx context.Context) {
	e.hwg.Add(1)
	go func() {
		defer e.hwg.Done()
		select {
		case <-h.router.Running():
		case <-lctx.Done():
			return
		}
		e.hmu.Lock()
		defer e.hmu.Unlock()
		if lctx.Err() != nil || h.router.IsClosed() {
			return
		}
		wh, err := e.addToRouter(h, term, lctx)
		if err != nil {
			e.logger.Error("Leader-only handler not added", err, watermill.LogFields{"handler_name": h.name})
			return
		}
		if err := h.router.RunHandlers(e.runCtx); err != nil {
			e.logger.Error("Leader-only handler not started", err, watermill.LogFields{"handler_name": h.name})
			return
		}
		select {
		case <-wh.Started():
			e.active = append(e.active, activeHandler{name: h.name, h: wh})
			e.logger.Info("Leader-only handler started", watermill.LogFields{"handler_name": h.name, "term": term})
		default:
			e.logger.Error("Leader-only handler not started", errors.New("the router did not start it"), watermill.LogFields{"handler_name": h.name})
		}
	}()
}

// addToRouter adds h (guarded by term) to its router; Watermill panics on a duplicate
// handler name, which is turned into an error.
func (e *Elector) addToRouter(h *leaderHandler, term uint64, lctx context.Context) (wh *message.Handler, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("election: add handler %s: %v", h.name, r)
		}
	}()
	fn := e.guard(term, lctx, h.fn)
	if h.publisher == nil {
		return h.router.AddConsumerHandler(h.name, h.subscribeTopic, h.subscriber,
			func(msg *message.Message) error { _, err := fn(msg); return err }), nil
	}
	return h.router.AddHandler(h.name, h.subscribeTopic, h.subscriber, h.publishTopic, keepOpen{h.publisher}, fn), nil
}

// stopHandlers stops every running leader-only handler and waits for each to stop.
func (e *Elector) stopHandlers() {
	e.hmu.Lock()
	active := e.active
	e.active = nil
	e.hmu.Unlock()
	for _, a := range active {
		a.h.Stop()
	}
	for _, a := range active {
		select {
		case <-a.h.Stopped():
			e.logger.Info("Leader-only handler stopped", watermill.LogFields{"handler_name": a.name})
		case <-time.After(stopTimeout):
			e.logger.Error("Leader-only handler did not stop in time", fmt.Errorf("still running after %v", stopTimeout), watermill.LogFields{"handler_name": a.name})
		}
	}
}

// guard refuses messages once the leadership of term is over, passes the term in the
// message context and cancels that context when the leadership (lctx) ends.
func (e *Elector) guard(term uint64, lctx context.Context, fn message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if st := e.State(); !st.IsLeader || st.Term != term {
			return nil, ErrNotLeader
		}
		return runLeading(msg, term, lctx, fn)
	}
}

// runLeading runs fn with a message context that carries term and is cancelled when
// lctx (the leadership) ends. The message gets its own context back afterwards, so a
// middleware that runs the handler again (retries) starts from an uncancelled one.
func runLeading(msg *message.Message, term uint64, lctx context.Context, fn message.HandlerFunc) ([]*message.Message, error) {
	orig := msg.Context()
	ctx, cancel := context.WithCancel(WithTerm(orig, term))
	stop := context.AfterFunc(lctx, cancel)
	defer func() {
		stop()
		cancel()
		msg.SetContext(orig)
	}()
	msg.SetContext(ctx)
	return fn(msg)
}

// Middleware refuses messages with ErrNotLeader while this instance does not lead (the
// router nacks them), passes the term in the message context (TermFromContext) and
// cancels that context when the leadership ends. Use it on handlers you run yourself;
// AddHandler is the way to consume only while leading.
func (e *Elector) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		lctx, term, err := e.Leading()
		if err != nil {
			return nil, err
		}
		return runLeading(msg, term, lctx, h)
	}
}

type termKey struct{}

// WithTerm returns ctx carrying a leadership term.
func WithTerm(ctx context.Context, term uint64) context.Context {
	return context.WithValue(ctx, termKey{}, term)
}

// TermFromContext returns the leadership term a leader-only handler runs in.
func TermFromContext(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(termKey{}).(uint64)
	return t, ok
}

// keepOpen keeps Watermill from closing a shared publisher when a handler stops.
type keepOpen struct{ message.Publisher }

func (keepOpen) Close() error { return nil }
