package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Handle consumes topic like Subscribe and runs h for each message, the way a Watermill
// router handler does (a nil error acks the message, an error nacks it), but without
// the router: messages go from the subscription straight to worker goroutines that
// Handle keeps for the subscription's lifetime (as many as messages were in flight at
// once, at most the prefetch), and each message is settled by the worker that ran it.
// Compared with a router handler on Subscribe, that spares each message two goroutine
// hand-offs (Watermill's forwarding goroutine and handler loop), a goroutine start, its
// stack growth and the watcher goroutine waiting for the ack, which is what an RPC
// server's latency is made of.
//
// Unlike a router handler, h gets no router or handler middleware: wrap h yourself. A
// panic in h is recovered, logged and nacks the message. h may call msg.Ack or
// msg.Nack itself (the first settlement wins), but the settlement is sent when h
// returns; if h is given up before (close timeout), an ack it made is still sent. The
// pool does not shrink: it keeps as many workers as were ever busy at once.
//
// Handle needs acknowledgements (the prefetch bounds the workers): it fails on a
// Subscriber with NoAck.
//
// done is closed when the subscription has ended (ctx ended or Close, and the messages
// delivered before were settled or given up after CloseTimeout) and every worker has
// exited, except workers whose handler outlived CloseTimeout: they exit when it
// returns (its message's context is cancelled by then). Everything else is as with
// Subscribe.
func (s *Subscriber) Handle(ctx context.Context, topic string, h message.NoPublishHandlerFunc) (done <-chan struct{}, err error) {
	if h == nil {
		return nil, errors.New("rabbitmq: Handle: nil handler")
	}
	if s.cfg.NoAck {
		return nil, errors.New("rabbitmq: Handle needs acknowledgements: the Subscriber has NoAck")
	}
	sub, err := s.subscribe(ctx, topic, nil, h)
	if err != nil {
		return nil, err
	}
	return sub.done, nil
}

// job is one message handed to a Handle worker.
type job struct {
	ss     *session
	msg    *message.Message
	tag    uint64
	cancel context.CancelFunc
}

// pool is the worker pool of a Handle subscription.
type pool struct {
	h       message.NoPublishHandlerFunc
	work    chan *job // unbuffered: a send succeeds only when a worker is idle
	workers sync.WaitGroup
}

// dispatch hands the pending message to an idle worker, or to a new one.
func (ss *session) dispatch() {
	j := &job{ss: ss, msg: ss.pending, tag: ss.pendingTag, cancel: ss.pendingCancel}
	ss.pending, ss.pendingCancel = nil, nil
	ss.jmu.Lock()
	ss.jobs[j] = struct{}{}
	ss.jobsWG.Add(1)
	ss.jmu.Unlock()
	p := ss.sub.pool
	select {
	case p.work <- j:
	default:
		p.workers.Add(1)
		go p.worker(j, ss.sub.logger)
	}
}

// worker runs j, then every job it is given, until the pool closes.
func (p *pool) worker(j *job, logger watermill.LoggerAdapter) {
	defer p.workers.Done()
	for ok := true; ok; j, ok = <-p.work {
		j.ss.settle(j, p.run(j.msg, logger))
	}
}

// run calls h, turning a panic into an error.
func (p *pool) run(msg *message.Message, logger watermill.LoggerAdapter) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
			logger.Error("Handler panicked; message nacked", err, watermill.LogFields{
				"message_uuid": msg.UUID, "stack": string(debug.Stack())})
		}
	}()
	return p.h(msg)
}

// settle acks or nacks j's message after its handler returned err, unless its session
// gave it up meanwhile (channel lost, close timeout).
func (ss *session) settle(j *job, err error) {
	acked := settledAs(j.msg, err)
	ss.jmu.Lock()
	_, ok := ss.jobs[j]
	delete(ss.jobs, j)
	ss.jmu.Unlock()
	if !ok {
		return // given up
	}
	// Outside jmu: the ack may write to the socket, and dispatch takes jmu. Once out of
	// the map the job is this worker's alone; jobsWG.Done comes last, so a drain waits
	// for the ack to be recorded (an acker closed meanwhile ignores it).
	ss.record(j.tag, acked)
	ss.settledOne()
	j.cancel()
	ss.jobsWG.Done()
}

// record hands a settlement to the acker and counts it.
func (ss *session) record(tag uint64, acked bool) {
	m := &ss.sub.s.metrics
	if acked {
		ss.acks.ack(tag)
		m.acked.Inc()
	} else {
		ss.acks.nack(tag)
		m.nacked.Inc()
	}
}

// settledAs settles msg by its handler's result, unless the handler (or a middleware)
// settled it already, and reports whether it ended up acked.
func settledAs(msg *message.Message, err error) (acked bool) {
	switch {
	case err == nil && msg.Ack():
		return true
	case err != nil && msg.Nack():
		return false
	}
	select {
	case <-msg.Acked():
		return true
	default:
		return false
	}
}

// abandonJobs gives up the messages still in handlers (their channel is lost, or the
// close timeout passed): their contexts are cancelled and what their handlers return
// is ignored (the broker redelivers them), except that, when the channel still works,
// a message the handler already acked or nacked itself is settled that way.
func (ss *session) abandonJobs(channelAlive bool) {
	ss.jmu.Lock()
	defer ss.jmu.Unlock()
	for j := range ss.jobs {
		delete(ss.jobs, j)
		if channelAlive {
			select {
			case <-j.msg.Acked():
				ss.record(j.tag, true)
			case <-j.msg.Nacked():
				ss.record(j.tag, false)
			default:
			}
		}
		j.cancel()
		ss.jobsWG.Done()
	}
}

// closePool ends a Handle subscription's workers once nothing will be dispatched any
// more: idle workers exit at once; busy ones when their handler returns. It waits for
// them until deadline (a handler given up at the close timeout or at a lost channel
// may run on).
func (sub *subscription) closePool(deadline time.Time) {
	if sub.pool == nil {
		return
	}
	close(sub.pool.work)
	exited := make(chan struct{})
	go func() {
		sub.pool.workers.Wait()
		close(exited)
	}()
	// Idle workers exit at once: give them a moment even when the deadline has passed.
	t := time.NewTimer(max(time.Until(deadline), 100*time.Millisecond))
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		sub.logger.Info("Handlers still running after the close timeout are left to finish", nil)
	}
}
