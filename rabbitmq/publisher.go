package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// Marshaler converts between Watermill messages and AMQP messages. It has the shape of
// watermill-amqp v3's Marshaler, so either package's marshalers fit. The default is
// wire.Codec{} (the micromessaging v3 wire format).
type Marshaler interface {
	Marshal(msg *message.Message) (amqp.Publishing, error)
	Unmarshal(d amqp.Delivery) (*message.Message, error)
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Exchange every message is published to; "" is the default exchange (the routing
	// key, i.e. the Publish topic, is then a queue name).
	Exchange string
	// Declare, when set, is declared on every new channel before the first publish
	// (e.g. the x.pubSub topic exchange, durable).
	Declare *Exchange
	// Mandatory publishes with the mandatory flag: a message no queue is bound for comes
	// back from the broker and its Publish fails with ErrUnroutable (wrapped). With
	// NoConfirm, returned messages are only logged and counted.
	Mandatory bool
	// NoConfirm turns publisher confirms off: Publish returns once the messages are
	// written to the connection, without knowing whether the broker took them. The zero
	// value (confirms on) makes Publish return when the broker confirmed its messages.
	NoConfirm bool
	// Marshaler converts messages; nil means wire.Codec{}.
	Marshaler Marshaler
	// Name is the value of the "publisher" label of the metrics and a log field. ""
	// means "default".
	Name string
	// CloseTimeout bounds how long Close waits for Publish calls in flight. 0 means 30 s.
	CloseTimeout time.Duration
	// Logger; nil means none.
	Logger watermill.LoggerAdapter
	// Registerer receives the publisher metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

func (c *PublisherConfig) setDefaults() {
	if c.Marshaler == nil {
		c.Marshaler = wire.Codec{}
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of the configuration at once.
func (c PublisherConfig) Validate() error {
	var errs []error
	if c.Declare != nil {
		if err := c.Declare.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, errors.New("rabbitmq: PublisherConfig.CloseTimeout must not be negative"))
	}
	return errors.Join(errs...)
}

// Publisher publishes Watermill messages to RabbitMQ over one channel of a Connection,
// with publisher confirms pipelined across concurrent Publish calls. It implements
// message.Publisher. See the package documentation for guarantees.
//
// A Publisher is safe for concurrent use.
type Publisher struct {
	conn    *Connection
	cfg     PublisherConfig
	logger  watermill.LoggerAdapter
	metrics pubMetrics

	cur     atomic.Pointer[pubChannel] // the channel in use; nil or dead = open a new one
	openSem chan struct{}              // one opener at a time (a semaphore that honours ctx)

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // Publish calls
	closing  chan struct{}
	trackers sync.WaitGroup // channel goroutines
}

// NewPublisher returns a Publisher on conn. It does no I/O and starts no goroutine: the
// channel is opened by the first Publish.
func NewPublisher(conn *Connection, cfg PublisherConfig) (*Publisher, error) {
	cfg.setDefaults()
	err := cfg.Validate()
	if conn == nil {
		err = errors.Join(err, errors.New("rabbitmq: NewPublisher: nil Connection"))
	}
	if err != nil {
		return nil, err
	}
	return &Publisher{
		conn:    conn,
		cfg:     cfg,
		logger:  cfg.Logger.With(watermill.LogFields{"publisher": cfg.Name}),
		metrics: newPubMetrics(cfg.Registerer, cfg.Name),
		openSem: make(chan struct{}, 1),
		closing: make(chan struct{}),
	}, nil
}

// Publish publishes msgs with routing key topic to PublisherConfig.Exchange, in order,
// and returns when the broker confirmed all of them (or at once after writing them with
// NoConfirm). Concurrent calls share one channel and their confirms are pipelined.
//
// During an outage Publish waits for the connection to come back, bounded by
// msg.Context() (the first message's; with several messages, any of their contexts
// ending ends the wait) and by Close. A message whose channel or connection dies before
// its confirm arrives is published again on the next channel, so a nil error means every
// message was confirmed (a message may then be delivered twice: at-least-once).
//
// Errors: ErrUnroutable (wrapped) for a mandatory message the broker returned, ErrNacked
// (wrapped) for a message the broker refused, a ctx error when the context ended first
// (the message may or may not have been published), the Marshaler's error, a channel
// error from the broker (e.g. 404 for a missing exchange), ErrNotConnected before
// Connection.Connect, ErrClosed after Close.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	p.inflight.Add(1)
	p.mu.Unlock()
	defer p.inflight.Done()

	pubs := make([]amqp.Publishing, len(msgs))
	for i, m := range msgs {
		pub, err := p.cfg.Marshaler.Marshal(m)
		if err != nil {
			return fmt.Errorf("rabbitmq: marshal message %s: %w", m.UUID, err)
		}
		if pub.MessageId == "" && p.cfg.Mandatory {
			pub.MessageId = m.UUID // returns are matched to messages by MessageId
		}
		pubs[i] = pub
	}

	ctx := msgs[0].Context()
	if len(msgs) > 1 {
		var stop func()
		ctx, stop = mergeContexts(msgs)
		defer stop()
	}

	todo := make([]int, len(msgs))
	for i := range todo {
		todo[i] = i
	}
	var errs []error
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt > 0 {
			p.metrics.retried.Add(float64(len(todo)))
			p.logger.Debug("Publishing again after the channel was lost", watermill.LogFields{"topic": topic, "messages": len(todo)})
		}
		pc, err := p.channel(ctx)
		if err != nil {
			return err
		}
		b := newBatch(len(todo))
		for j, i := range todo {
			pc.publish(ctx, p, topic, pubs[i], b, j)
		}
		if p.cfg.NoConfirm {
			b.wait(ctx) // settled by publish itself
		} else if err := b.wait(ctx); err != nil {
			return fmt.Errorf("rabbitmq: waiting for publisher confirms: %w", err)
		}
		var retry []int
		for j, i := range todo {
			switch r := b.results[j]; {
			case r.lost:
				retry = append(retry, i)
			case r.err != nil:
				errs = append(errs, fmt.Errorf("message %s: %w", msgs[i].UUID, r.err))
			}
		}
		todo = retry
	}
	if len(errs) > 0 {
		return fmt.Errorf("rabbitmq: publish to %q: %w", topic, errors.Join(errs...))
	}
	return nil
}

// Close waits for Publish calls in flight (up to CloseTimeout), then closes the channel.
// Publish calls waiting for the connection return ErrClosed. Later Publish calls return
// ErrClosed. Close is idempotent and does not close the Connection.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.closing)
	p.mu.Unlock()

	done := make(chan struct{})
	go func() {
		p.inflight.Wait()
		close(done)
	}()
	t := time.NewTimer(p.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.logger.Error("Publisher closed before every Publish in flight finished", nil, watermill.LogFields{"close_timeout": p.cfg.CloseTimeout.String()})
	}
	// Take the opener slot so no channel is being opened, then close the current one.
	p.openSem <- struct{}{}
	if pc := p.cur.Swap(nil); pc != nil {
		pc.closing.Store(true)
		_ = pc.ch.Close()
	}
	<-p.openSem
	p.trackers.Wait()
	<-done // Publish calls end now: their channel is closed
	return nil
}

// channel returns the live channel, opening one (waiting for the connection) when there
// is none.
func (p *Publisher) channel(ctx context.Context) (*pubChannel, error) {
	if pc := p.cur.Load(); pc != nil && !pc.ch.IsClosed() {
		return pc, nil
	}
	select {
	case p.openSem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("rabbitmq: waiting for a channel: %w", ctx.Err())
	case <-p.closing:
		return nil, ErrClosed
	}
	defer func() { <-p.openSem }()
	for {
		if pc := p.cur.Load(); pc != nil && !pc.ch.IsClosed() {
			return pc, nil
		}
		select {
		case <-p.closing:
			return nil, ErrClosed
		default:
		}
		conn, err := p.conn.wait(ctx, p.closing)
		if err != nil {
			return nil, err
		}
		pc, err := p.open(conn)
		if err == nil {
			p.cur.Store(pc)
			return pc, nil
		}
		if !conn.IsClosed() {
			return nil, err
		}
		// The connection died while we opened the channel: wait for the next one.
	}
}

func (p *Publisher) open(conn *amqp.Connection) (*pubChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: open publisher channel: %w", err)
	}
	fail := func(err error) (*pubChannel, error) {
		_ = ch.Close()
		return nil, err
	}
	if p.cfg.Declare != nil {
		if err := p.cfg.Declare.declare(ch); err != nil {
			return fail(err)
		}
	}
	pc := &pubChannel{ch: ch, conn: conn, confirm: !p.cfg.NoConfirm}
	pc.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	if p.cfg.Mandatory {
		pc.returns = ch.NotifyReturn(make(chan amqp.Return, 256))
	}
	if pc.confirm {
		if err := ch.Confirm(false); err != nil {
			return fail(fmt.Errorf("rabbitmq: confirm mode: %w", err))
		}
		pc.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, 1024))
		pc.returned = make(map[string]int)
	}
	p.trackers.Add(1)
	go pc.track(p)
	return pc, nil
}

// pubChannel is one AMQP channel of a Publisher and its confirm tracking.
type pubChannel struct {
	ch       *amqp.Channel
	conn     *amqp.Connection
	confirm  bool
	closing  atomic.Bool // closed by Publisher.Close: pending publishes fail, no retry
	closed   chan *amqp.Error
	confirms chan amqp.Confirmation
	returns  chan amqp.Return
	returned map[string]int // MessageId -> returns not yet matched (tracker goroutine only)

	pubMu sync.Mutex // serializes sequence numbers and writes

	pendMu  sync.Mutex
	pending pendingRing // FIFO by delivery tag
	dead    bool        // set by the tracker: no new pending entries
	deadErr error       // nil: retry on the next channel
}

type pendingPub struct {
	tag   uint64
	msgID string
	b     *batch
	i     int
}

// publish writes one message and registers it for its confirm; the outcome lands in
// b.results[i].
func (pc *pubChannel) publish(ctx context.Context, p *Publisher, topic string, pub amqp.Publishing, b *batch, i int) {
	pc.pubMu.Lock()
	var tag uint64
	if pc.confirm {
		tag = pc.ch.GetNextPublishSeqNo()
		pc.pendMu.Lock()
		if pc.dead {
			retry := pc.deadErr == nil
			err := pc.deadErr
			pc.pendMu.Unlock()
			pc.pubMu.Unlock()
			b.settle(i, err, retry)
			return
		}
		pc.pending.push(pendingPub{tag: tag, msgID: pub.MessageId, b: b, i: i})
		pc.pendMu.Unlock()
	}
	err := pc.ch.PublishWithContext(ctx, p.cfg.Exchange, topic, p.cfg.Mandatory, false, pub)
	if err != nil && pc.confirm {
		// amqp091 gave the sequence number back; so do we (we hold pubMu: it is the last).
		pc.pendMu.Lock()
		if pc.pending.n > 0 && pc.pending.back().tag == tag && pc.pending.back().b == b {
			pc.pending.popBack()
		} else {
			b = nil // the tracker settled it already (channel died)
		}
		pc.pendMu.Unlock()
	}
	pc.pubMu.Unlock()
	if err == nil {
		p.metrics.published.Inc()
		if !pc.confirm {
			b.settle(i, nil, false)
		}
		return
	}
	if b == nil {
		return
	}
	switch {
	case ctx.Err() != nil:
		b.settle(i, ctx.Err(), false)
	case errors.Is(err, amqp.ErrClosed) || pc.ch.IsClosed():
		if pc.closing.Load() {
			b.settle(i, ErrClosed, false)
		} else {
			b.settle(i, nil, true) // the channel is gone: try the next one
		}
	default:
		b.settle(i, err, false)
	}
}

// track resolves confirms and returns until the channel closes, then settles what is
// still pending. amqp091 dispatches a basic.return before the basic.ack of the same
// message from one goroutine, so draining the returns channel before resolving a
// confirm is enough to see the return of that message.
func (pc *pubChannel) track(p *Publisher) {
	defer p.trackers.Done()
	var reason *amqp.Error
	closed, confirms := pc.closed, pc.confirms
	for closed != nil || confirms != nil || pc.returns != nil {
		select {
		case r, ok := <-pc.returns:
			if !ok {
				pc.returns = nil
				continue
			}
			pc.noteReturn(p, r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			pc.drainReturns(p)
			pc.resolve(p, c)
		case e, ok := <-closed:
			// Confirms and returns are closed right after: keep draining them.
			if ok {
				reason = e
			}
			closed = nil
		}
	}
	// The channel is closed. Decide what the publishes still pending get.
	var err error
	switch {
	case pc.closing.Load():
		err = ErrClosed
	case pc.conn.IsClosed():
		// Connection lost: publish again on the next connection.
	case reason != nil:
		err = fmt.Errorf("rabbitmq: channel closed by the broker: %w", reason)
		p.logger.Error("Publisher channel closed by the broker", reason, nil)
	}
	pc.pendMu.Lock()
	pc.dead, pc.deadErr = true, err
	pending := pc.pending.drain()
	pc.pendMu.Unlock()
	for _, pp := range pending {
		pp.b.settle(pp.i, err, err == nil)
	}
	if len(pending) > 0 && err == nil {
		p.logger.Info("Publisher channel lost before confirms; publishing those messages again",
			watermill.LogFields{"messages": len(pending)})
	}
}

func (pc *pubChannel) noteReturn(p *Publisher, r amqp.Return) {
	p.metrics.returned.Inc()
	if !pc.confirm {
		p.logger.Error("Message returned as unroutable", ErrUnroutable, watermill.LogFields{
			"message_uuid": r.MessageId, "exchange": r.Exchange, "routing_key": r.RoutingKey,
			"reply_code": r.ReplyCode, "reply_text": r.ReplyText})
		return
	}
	pc.returned[r.MessageId]++
}

func (pc *pubChannel) drainReturns(p *Publisher) {
	for {
		select {
		case r, ok := <-pc.returns:
			if !ok {
				pc.returns = nil
				return
			}
			pc.noteReturn(p, r)
		default:
			return
		}
	}
}

func (pc *pubChannel) resolve(p *Publisher, c amqp.Confirmation) {
	var pp pendingPub
	found := false
	pc.pendMu.Lock()
	// Confirms arrive in tag order (amqp091 resequences them), so the entry is the oldest.
	for pc.pending.n > 0 && pc.pending.front().tag <= c.DeliveryTag {
		pp = pc.pending.pop()
		if pp.tag == c.DeliveryTag {
			found = true
			break
		}
		pc.pendMu.Unlock()
		pp.b.settle(pp.i, errors.New("rabbitmq: publisher confirm missing"), false)
		pc.pendMu.Lock()
	}
	pc.pendMu.Unlock()
	if !found {
		return
	}
	var err error
	switch {
	case pc.returned[pp.msgID] > 0:
		if pc.returned[pp.msgID]--; pc.returned[pp.msgID] == 0 {
			delete(pc.returned, pp.msgID)
		}
		err = ErrUnroutable
	case !c.Ack:
		p.metrics.nacked.Inc()
		err = ErrNacked
	default:
		p.metrics.confirmed.Inc()
	}
	pp.b.settle(pp.i, err, false)
}

// pendingRing is a FIFO of publishes waiting for their confirm.
type pendingRing struct {
	buf  []pendingPub // len is a power of two
	head int
	n    int
}

func (r *pendingRing) push(pp pendingPub) {
	if r.n == len(r.buf) {
		nb := make([]pendingPub, max(64, 2*len(r.buf)))
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = pp
	r.n++
}

func (r *pendingRing) front() *pendingPub { return &r.buf[r.head] }

func (r *pendingRing) back() *pendingPub { return &r.buf[(r.head+r.n-1)&(len(r.buf)-1)] }

func (r *pendingRing) pop() pendingPub {
	pp := r.buf[r.head]
	r.buf[r.head] = pendingPub{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return pp
}

func (r *pendingRing) popBack() {
	r.buf[(r.head+r.n-1)&(len(r.buf)-1)] = pendingPub{}
	r.n--
}

func (r *pendingRing) drain() []pendingPub {
	out := make([]pendingPub, 0, r.n)
	for r.n > 0 {
		out = append(out, r.pop())
	}
	return out
}

// result is the outcome of one message of a Publish attempt.
type result struct {
	err  error
	lost bool // channel died before the confirm: publish again
}

// batch collects the outcomes of the messages of one Publish attempt.
type batch struct {
	results   []result
	remaining atomic.Int32
	done      chan struct{}
}

func newBatch(n int) *batch {
	b := &batch{results: make([]result, n), done: make(chan struct{})}
	b.remaining.Store(int32(n))
	return b
}

func (b *batch) settle(i int, err error, lost bool) {
	b.results[i] = result{err: err, lost: lost}
	if b.remaining.Add(-1) == 0 {
		close(b.done)
	}
}

func (b *batch) wait(ctx context.Context) error {
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mergeContexts returns a context that ends when any message's context ends.
func mergeContexts(msgs []*message.Message) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(msgs[0].Context())
	var stops []func() bool
	seen := map[context.Context]bool{msgs[0].Context(): true}
	for _, m := range msgs[1:] {
		mctx := m.Context()
		if seen[mctx] {
			continue
		}
		seen[mctx] = true
		stops = append(stops, context.AfterFunc(mctx, func() { cancel(context.Cause(mctx)) }))
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel(nil)
	}
}
