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

	// cur holds the channels in use (nil or dead = open a new one): [slotMain] in the
	// configured mode, [slotUnconfirmed] without confirms for PublishUnconfirmed (the
	// same as slotMain with NoConfirm).
	cur     [2]atomic.Pointer[pubChannel]
	openSem chan struct{} // one opener at a time (a semaphore that honours ctx)

	hmu   sync.Mutex
	hooks map[string]func() // MessageId -> onReturn of PublishUnconfirmed

	mu       sync.RWMutex // guards closed; Publish holds it for reading
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
		hooks:   make(map[string]func()),
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
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	p.inflight.Add(1)
	p.mu.RUnlock()
	defer p.inflight.Done()

	// One message (the common case) allocates no slices.
	var (
		pubsBuf [1]amqp.Publishing
		todoBuf [1]int
		resBuf  [1]result
		dcsBuf  [1]*amqp.DeferredConfirmation
	)
	pubs := pubsBuf[:]
	if len(msgs) > 1 {
		pubs = make([]amqp.Publishing, len(msgs))
	}
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

	todo := todoBuf[:]
	if len(msgs) > 1 {
		todo = make([]int, len(msgs))
		for i := range todo {
			todo[i] = i
		}
	}
	var errs []error
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt > 0 {
			p.metrics.retried.Add(float64(len(todo)))
			p.logger.Debug("Publishing again after the channel was lost", watermill.LogFields{"topic": topic, "messages": len(todo)})
		}
		pc, err := p.channel(ctx, slotMain)
		if err != nil {
			return err
		}
		var results []result
		var dcs []*amqp.DeferredConfirmation
		if len(todo) == 1 {
			resBuf[0], dcsBuf[0] = result{}, nil
			results, dcs = resBuf[:], dcsBuf[:]
		} else {
			results, dcs = make([]result, len(todo)), make([]*amqp.DeferredConfirmation, len(todo))
		}
		pc.cork.cork()
		for j, i := range todo {
			dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.Exchange, topic, p.cfg.Mandatory, false, pubs[i])
			if err != nil {
				results[j] = pc.writeFailed(ctx, err)
				continue
			}
			p.metrics.published.Inc()
			dcs[j] = dc
		}
		pc.cork.uncork()
		for j, dc := range dcs {
			if dc == nil { // write failed, or NoConfirm
				continue
			}
			select {
			case <-dc.Done():
			case <-ctx.Done():
				return fmt.Errorf("rabbitmq: waiting for publisher confirms: %w", ctx.Err())
			}
			results[j] = pc.outcome(p, dc, pubs[todo[j]].MessageId)
		}
		var retry []int
		for j, i := range todo {
			switch r := results[j]; {
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

// PublishUnconfirmed publishes msg with routing key topic to PublisherConfig.Exchange
// without waiting for a publisher confirm, for a caller that learns the outcome another
// way (an RPC client waits for the reply). It uses a channel of its own without
// confirms (the Publisher's channel when NoConfirm), so the broker sends no confirm for
// it either. It returns once msg is written to the connection (waiting for the
// connection during an outage, bounded by msg.Context() and by Close).
//
// With Mandatory, when the broker returns msg as unroutable, onReturn (if not nil) is
// called once, from the Publisher's goroutine (it must not block), unless forget was
// called before. Returns are matched by MessageId (msg.UUID with wire.Codec): a second
// PublishUnconfirmed of a message with the same id while the first is not forgotten
// fails. Call forget once the return no longer matters (the caller got its reply or
// gave up); it is idempotent.
//
// lost is closed when the channel msg was written on has closed (connection lost,
// channel error, Close): msg may or may not have reached the broker, and no return
// will be reported for it. A caller still waiting may publish it again.
func (p *Publisher) PublishUnconfirmed(topic string, msg *message.Message, onReturn func()) (lost <-chan struct{}, forget func(), err error) {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return nil, nil, ErrClosed
	}
	p.inflight.Add(1)
	p.mu.RUnlock()
	defer p.inflight.Done()

	pub, err := p.cfg.Marshaler.Marshal(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("rabbitmq: marshal message %s: %w", msg.UUID, err)
	}
	if pub.MessageId == "" {
		pub.MessageId = msg.UUID
	}
	forget = func() {}
	if onReturn != nil && p.cfg.Mandatory {
		id := pub.MessageId
		p.hmu.Lock()
		_, dup := p.hooks[id]
		if !dup {
			p.hooks[id] = onReturn
		}
		p.hmu.Unlock()
		if dup {
			return nil, nil, fmt.Errorf("rabbitmq: message %s: another publish of this id awaits its return", id)
		}
		forget = func() {
			p.hmu.Lock()
			delete(p.hooks, id)
			p.hmu.Unlock()
		}
	}
	ctx := msg.Context()
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			p.metrics.retried.Inc()
		}
		pc, err := p.channel(ctx, slotUnconfirmed)
		if err != nil {
			forget()
			return nil, nil, err
		}
		pc.cork.cork()
		// What PublishWithContext checks, without making ctx's Done channel.
		if err = ctx.Err(); err == nil {
			err = pc.ch.Publish(p.cfg.Exchange, topic, p.cfg.Mandatory, false, pub)
		}
		pc.cork.uncork()
		if err == nil {
			p.metrics.published.Inc()
			return pc.dead, forget, nil
		}
		if r := pc.writeFailed(ctx, err); !r.lost {
			forget()
			return nil, nil, fmt.Errorf("rabbitmq: publish to %q: message %s: %w", topic, msg.UUID, r.err)
		}
		// The channel died before the write: write it on the next one.
	}
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
	for i := range p.cur {
		if pc := p.cur[i].Swap(nil); pc != nil {
			pc.closing.Store(true)
			_ = pc.ch.Close()
		}
	}
	<-p.openSem
	p.trackers.Wait()
	<-done // Publish calls end now: their channel is closed
	return nil
}

// Slots of Publisher.cur.
const (
	slotMain        = 0
	slotUnconfirmed = 1
)

// channel returns the live channel of slot, opening one (waiting for the connection)
// when there is none.
func (p *Publisher) channel(ctx context.Context, slot int) (*pubChannel, error) {
	if slot == slotUnconfirmed && p.cfg.NoConfirm {
		slot = slotMain
	}
	cur := &p.cur[slot]
	if pc := cur.Load(); pc != nil && !pc.ch.IsClosed() {
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
		if pc := cur.Load(); pc != nil && !pc.ch.IsClosed() {
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
		pc, err := p.open(conn, slot == slotMain && !p.cfg.NoConfirm)
		if err == nil {
			cur.Store(pc)
			return pc, nil
		}
		if !conn.IsClosed() {
			return nil, err
		}
		// The connection died while we opened the channel: wait for the next one.
	}
}

func (p *Publisher) open(conn *amqp.Connection, confirm bool) (*pubChannel, error) {
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
	pc := &pubChannel{ch: ch, conn: conn, confirm: confirm, dead: make(chan struct{}), cork: p.conn.corkFor(conn)}
	if pc.cork == nil { // a reconnect happened meanwhile: this channel is dead already
		return fail(fmt.Errorf("rabbitmq: open publisher channel: %w", amqp.ErrClosed))
	}
	pc.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	if p.cfg.Mandatory {
		// amqp091 hands a basic.return to these two listeners in turn, and only then reads
		// the next frame (the basic.ack of the same message). The watcher records the
		// return from the first and then takes the second, so by the time a publisher sees
		// its confirm, the return of its message is recorded.
		pc.returns = ch.NotifyReturn(make(chan amqp.Return, 64))
		pc.barrier = ch.NotifyReturn(make(chan amqp.Return))
		pc.returned = make(map[string]int)
	}
	if pc.confirm {
		if err := ch.Confirm(false); err != nil {
			return fail(fmt.Errorf("rabbitmq: confirm mode: %w", err))
		}
	}
	p.trackers.Add(1)
	go pc.watch(p)
	return pc, nil
}

// pubChannel is one AMQP channel of a Publisher. Confirms are tracked by amqp091 (one
// DeferredConfirmation per publish, resolved by its reader goroutine); a watcher
// goroutine records returns and the reason the channel closed.
type pubChannel struct {
	ch      *amqp.Channel
	conn    *amqp.Connection
	cork    *corkConn // conn's socket: publishes of one burst are written together
	confirm bool
	closing atomic.Bool // closed by Publisher.Close: pending publishes fail, no retry
	closed  chan *amqp.Error
	returns chan amqp.Return
	barrier chan amqp.Return

	rmu      sync.Mutex
	returned map[string]int // MessageId -> returns not yet matched to a confirm

	dead    chan struct{} // closed by the watcher after the channel closed
	deadErr error         // set before dead is closed; nil: publish again on the next channel
}

// watch records returns until the channel closes, then records why it closed.
func (pc *pubChannel) watch(p *Publisher) {
	defer p.trackers.Done()
	var reason *amqp.Error
	closed, returns := pc.closed, pc.returns
	for closed != nil || returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			pc.noteReturn(p, r)
			if _, ok := <-pc.barrier; !ok {
				returns = nil
			}
		case e, ok := <-closed:
			if ok {
				reason = e
			}
			closed = nil
		}
	}
	switch {
	case pc.closing.Load():
		pc.deadErr = ErrClosed
	case pc.conn.IsClosed():
		// Connection lost: what was not confirmed is published again on the next one.
	case reason != nil:
		pc.deadErr = fmt.Errorf("rabbitmq: channel closed by the broker: %w", reason)
		p.logger.Error("Publisher channel closed by the broker", reason, nil)
	}
	close(pc.dead)
}

func (pc *pubChannel) noteReturn(p *Publisher, r amqp.Return) {
	p.metrics.returned.Inc()
	if !pc.confirm {
		p.hmu.Lock()
		onReturn := p.hooks[r.MessageId]
		delete(p.hooks, r.MessageId)
		p.hmu.Unlock()
		if onReturn != nil {
			onReturn()
			return
		}
		p.logger.Error("Message returned as unroutable", ErrUnroutable, watermill.LogFields{
			"message_uuid": r.MessageId, "exchange": r.Exchange, "routing_key": r.RoutingKey,
			"reply_code": r.ReplyCode, "reply_text": r.ReplyText})
		return
	}
	pc.rmu.Lock()
	pc.returned[r.MessageId]++
	pc.rmu.Unlock()
}

// takeReturn reports (once) whether the message with this id was returned.
func (pc *pubChannel) takeReturn(id string) bool {
	pc.rmu.Lock()
	defer pc.rmu.Unlock()
	n := pc.returned[id]
	if n == 0 {
		return false
	}
	if n == 1 {
		delete(pc.returned, id)
	} else {
		pc.returned[id] = n - 1
	}
	return true
}

// outcome is the result of a publish whose confirmation is done.
func (pc *pubChannel) outcome(p *Publisher, dc *amqp.DeferredConfirmation, id string) result {
	if pc.returns != nil && pc.takeReturn(id) {
		return result{err: ErrUnroutable}
	}
	if dc.Acked() {
		p.metrics.confirmed.Inc()
		return result{}
	}
	if pc.ch.IsClosed() {
		// amqp091 resolves the confirmations still pending as nacks when the channel
		// closes.
		<-pc.dead
		return result{err: pc.deadErr, lost: pc.deadErr == nil}
	}
	p.metrics.nacked.Inc()
	return result{err: ErrNacked}
}

// writeFailed classifies a failed write.
func (pc *pubChannel) writeFailed(ctx context.Context, err error) result {
	switch {
	case ctx.Err() != nil:
		return result{err: ctx.Err()}
	case errors.Is(err, amqp.ErrClosed) || pc.ch.IsClosed():
		<-pc.dead
		return result{err: pc.deadErr, lost: pc.deadErr == nil}
	}
	return result{err: err}
}

// result is the outcome of one message of a Publish attempt.
type result struct {
	err  error
	lost bool // channel died before the confirm: publish again
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
