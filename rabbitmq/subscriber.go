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

// ackFlushDelay is how long a settled message may wait for its coalesced ack.
const ackFlushDelay = 2 * time.Millisecond

// initTimeout bounds SubscribeInitialize's wait for the connection.
const initTimeout = 30 * time.Second

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// Queue returns the queue to declare and consume for a Subscribe topic. nil means a
	// durable queue named like the topic, without arguments or bindings.
	Queue func(topic string) Queue
	// Declare lists exchanges to declare before the queue (e.g. x.pubSub for listen
	// queues bound to it).
	Declare []Exchange
	// Prefetch is how many unacked messages the broker sends ahead, per subscription;
	// it is also how many messages one subscription has in flight in handlers at once.
	// 0 means 100. Change it at run time with SetPrefetch. Ignored with NoAck.
	Prefetch int
	// NoAck consumes without acknowledgements: the broker forgets a message once sent.
	// For reply queues; a message in flight is lost if the process dies.
	NoAck bool
	// Exclusive asks for an exclusive consumer (no other consumer on the queue).
	Exclusive bool
	// NackDelay is how long a nacked message waits before it is requeued, with jitter
	// (75-125 %), so a failing message does not spin in a hot loop. It keeps its
	// prefetch slot meanwhile. 0 means 250 ms; negative means requeue at once.
	NackDelay time.Duration
	// CloseTimeout bounds how long Close (or the end of a Subscribe ctx) waits for
	// handlers to ack or nack messages already delivered. 0 means 30 s.
	CloseTimeout time.Duration
	// Marshaler converts messages; nil means wire.Codec{}.
	Marshaler Marshaler
	// Name is the value of the "subscriber" label of the metrics and a log field. ""
	// means "default".
	Name string
	// Logger; nil means none.
	Logger watermill.LoggerAdapter
	// Registerer receives the subscriber metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

func (c *SubscriberConfig) setDefaults() {
	if c.Queue == nil {
		c.Queue = func(topic string) Queue { return Queue{Name: topic, Durable: true} }
	}
	if c.Prefetch == 0 {
		c.Prefetch = 100
	}
	if c.NackDelay == 0 {
		c.NackDelay = 250 * time.Millisecond
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Marshaler == nil {
		c.Marshaler = wire.Codec{}
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of the configuration at once.
func (c SubscriberConfig) Validate() error {
	var errs []error
	if err := validPrefetch(c.Prefetch); err != nil {
		errs = append(errs, err)
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, errors.New("rabbitmq: SubscriberConfig.CloseTimeout must not be negative"))
	}
	for _, e := range c.Declare {
		if err := e.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validPrefetch(n int) error {
	if n < 1 || n > 65535 {
		return fmt.Errorf("rabbitmq: prefetch %d out of range 1..65535", n)
	}
	return nil
}

// Subscriber consumes RabbitMQ queues as Watermill message channels. It implements
// message.Subscriber and message.SubscribeInitializer, and its SetPrefetch, Pause and
// Resume give flow control (qos.FlowControl). See the package documentation for
// guarantees.
//
// A Subscriber is safe for concurrent use.
type Subscriber struct {
	conn    *Connection
	cfg     SubscriberConfig
	logger  watermill.LoggerAdapter
	metrics subMetrics

	ctlMu sync.Mutex // serializes Pause, Resume, SetPrefetch

	mu            sync.Mutex
	closed        bool
	paused        bool
	prefetch      int
	subs          map[*subscription]struct{}
	closeDeadline time.Time
	closing       chan struct{}
	wg            sync.WaitGroup
}

// NewSubscriber returns a Subscriber on conn. It does no I/O and starts no goroutine.
func NewSubscriber(conn *Connection, cfg SubscriberConfig) (*Subscriber, error) {
	cfg.setDefaults()
	err := cfg.Validate()
	if conn == nil {
		err = errors.Join(err, errors.New("rabbitmq: NewSubscriber: nil Connection"))
	}
	if err != nil {
		return nil, err
	}
	return &Subscriber{
		conn:     conn,
		cfg:      cfg,
		logger:   cfg.Logger.With(watermill.LogFields{"subscriber": cfg.Name}),
		metrics:  newSubMetrics(cfg.Registerer, cfg.Name),
		prefetch: cfg.Prefetch,
		subs:     make(map[*subscription]struct{}),
		closing:  make(chan struct{}),
	}, nil
}

// SubscribeInitialize declares the exchanges, queue and bindings of topic without
// consuming, so that messages published before Subscribe are kept. It waits up to 30 s
// for the connection.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	for {
		conn, err := s.conn.wait(ctx, s.closing)
		if err != nil {
			return err
		}
		ch, err := conn.Channel()
		if err == nil {
			_, err = declareTopology(ch, s.cfg.Declare, s.cfg.Queue(topic))
			_ = ch.Close()
		}
		if err == nil || !conn.IsClosed() {
			return err
		}
	}
}

// Subscribe declares the topology of topic (SubscriberConfig.Queue, Declare) and starts
// consuming it. It waits for the connection (bounded by ctx) and reports declaration and
// consume errors (e.g. 406 PRECONDITION_FAILED for a queue declared with other
// arguments, 405 RESOURCE_LOCKED for another connection's exclusive queue).
//
// Up to Prefetch messages are in flight at once; each must be acked or nacked
// (message.Router does it). The channel is closed when ctx ends or on Close, after
// consuming stopped; messages delivered before then can still be acked until
// CloseTimeout. A message's context is cancelled once it is acked or nacked, when its
// channel is lost (the broker redelivers it), or when the close timeout gives up on it.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	sub, err := s.subscribe(ctx, topic, nil, nil)
	if err != nil {
		return nil, err
	}
	return sub.out, nil
}

// SubscribeFunc is Subscribe with a callback instead of a channel: fn is called with
// each message, in delivery order, on the subscription's own goroutine, so a message
// reaches fn without a goroutine hand-off. fn must not block (the subscription waits
// for it); each message must still be acked or nacked, as with Subscribe, unless
// NoAck. done is closed when the subscription has ended (ctx ended or Close, and the
// messages delivered before were settled or given up); fn is not called after that.
// Everything else is as with Subscribe.
func (s *Subscriber) SubscribeFunc(ctx context.Context, topic string, fn func(*message.Message)) (done <-chan struct{}, err error) {
	if fn == nil {
		return nil, errors.New("rabbitmq: SubscribeFunc: nil fn")
	}
	sub, err := s.subscribe(ctx, topic, fn, nil)
	if err != nil {
		return nil, err
	}
	return sub.done, nil
}

// subscribe starts a subscription that hands messages to its channel, to fn
// (SubscribeFunc) or to a worker pool running h (Handle).
func (s *Subscriber) subscribe(ctx context.Context, topic string, fn func(*message.Message), h message.NoPublishHandlerFunc) (*subscription, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	sub := &subscription{
		fn:       fn,
		s:        s,
		topic:    topic,
		q:        s.cfg.Queue(topic),
		out:      make(chan *message.Message),
		ctl:      make(chan chan struct{}),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
		ctxDone:  ctx.Done(),
		msgCtx:   context.WithoutCancel(ctx),
		logger:   s.logger.With(watermill.LogFields{"topic": topic}),
	}
	if h != nil {
		sub.pool = &pool{h: h, work: make(chan *job)}
	}
	var ss *session
	for {
		conn, err := s.conn.wait(ctx, s.closing)
		if err != nil {
			return nil, err
		}
		ss, err = sub.openSession(conn)
		if err == nil {
			break
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("rabbitmq: subscribe to %q: %w", topic, err)
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if ss.acks != nil { // nil with NoAck
			ss.acks.close(false)
		}
		_ = ss.ch.Close()
		return nil, ErrClosed
	}
	s.subs[sub] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	sub.logger.Debug("Subscribed", watermill.LogFields{"queue": ss.queue})
	go sub.run(ss)
	return sub, nil
}

// SetPrefetch changes the prefetch of every subscription of s, now and after
// reconnects. A running consumer is replaced by one with the new limit (RabbitMQ applies
// a per-consumer prefetch to new consumers only); messages already delivered are not
// affected and are handed to handlers as usual.
func (s *Subscriber) SetPrefetch(n int) error {
	if err := validPrefetch(n); err != nil {
		return err
	}
	return s.control(func() { s.prefetch = n })
}

// Pause stops consuming (basic.cancel) on every subscription of s, until Resume. When
// Pause returns, no new message is handed out; messages buffered but not yet handed out
// are requeued at once; messages already in handlers can still be acked or nacked.
// Subscriptions made while paused start paused.
func (s *Subscriber) Pause() error { return s.control(func() { s.paused = true }) }

// Resume starts consuming again after Pause.
func (s *Subscriber) Resume() error { return s.control(func() { s.paused = false }) }

// Prefetch returns the prefetch in force.
func (s *Subscriber) Prefetch() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prefetch
}

// Paused reports whether the Subscriber is paused.
func (s *Subscriber) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

func (s *Subscriber) control(change func()) error {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	change()
	subs := make([]*subscription, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		reply := make(chan struct{})
		select {
		case sub.ctl <- reply:
			select {
			case <-reply:
			case <-sub.stopping:
			}
		case <-sub.stopping:
		}
	}
	return nil
}

func (s *Subscriber) desired() (paused bool, prefetch int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused, s.prefetch
}

// Close stops consuming on every subscription, closes their message channels, waits up
// to CloseTimeout for handlers to ack or nack the messages they hold, sends the pending
// acks and closes the channels. Messages still unsettled then are returned to their
// queue by the broker. Later Subscribe calls return ErrClosed. Close is idempotent (a
// call while another runs waits for the same end) and does not close the Connection.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	s.closeDeadline = time.Now().Add(s.cfg.CloseTimeout)
	close(s.closing)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// subscription is one Subscribe call: a goroutine that runs sessions (one channel each)
// until ctx ends or the Subscriber closes, reconnecting in between.
type subscription struct {
	s     *Subscriber
	topic string
	q     Queue
	out   chan *message.Message
	fn    func(*message.Message) // SubscribeFunc: called instead of sending to out
	pool  *pool                  // Handle: runs the messages instead of sending to out
	ctl   chan chan struct{}     // "apply the desired state", answered by closing the reply
	// stopping is closed when the subscription stops consuming for good (it may still
	// drain its handlers for a while); done when its goroutine ends.
	stopping chan struct{}
	done     chan struct{}
	ctxDone  <-chan struct{}
	msgCtx   context.Context // parent of message contexts: Subscribe's ctx without its cancel
	logger   watermill.LoggerAdapter
}

func (sub *subscription) run(ss *session) {
	s := sub.s
	defer func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
		close(sub.done)
		s.wg.Done()
	}()
	for {
		// A Pause or SetPrefetch may have come between opening the session and now.
		ss.apply()
		if ss.serve() {
			ss.stopConsuming()
			close(sub.stopping)
			close(sub.out)
			deadline := sub.closeDeadline()
			ss.drain(deadline)
			sub.closePool(deadline)
			sub.logger.Debug("Subscription ended", nil)
			return
		}
		ss.lost()
		ss = sub.reconnect()
		if ss == nil {
			close(sub.stopping)
			close(sub.out)
			sub.closePool(sub.closeDeadline())
			return
		}
	}
}

func (sub *subscription) closeDeadline() time.Time {
	select {
	case <-sub.s.closing:
		sub.s.mu.Lock()
		defer sub.s.mu.Unlock()
		return sub.s.closeDeadline
	default:
		return time.Now().Add(sub.s.cfg.CloseTimeout)
	}
}

// reconnect opens a new session after the channel was lost, with backoff; nil when the
// subscription should end (ctx, Close, or the Connection closed).
func (sub *subscription) reconnect() *session {
	s := sub.s
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(backoff(attempt, s.conn.cfg.BackoffMin, s.conn.cfg.BackoffMax))
		conn, err := sub.waitConn(t.C)
		t.Stop()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				select {
				case <-s.closing:
				case <-sub.ctxDone:
				default:
					sub.logger.Error("Subscription ends: the connection was closed", err, nil)
				}
			}
			return nil
		}
		ss, err := sub.openSession(conn)
		if err == nil {
			sub.logger.Info("Subscription resumed after the channel was lost", watermill.LogFields{"queue": ss.queue, "attempts": attempt})
			return ss
		}
		sub.logger.Error("Subscription could not resume; retrying", err, watermill.LogFields{"attempt": attempt})
	}
}

// waitConn waits for after, then for a live connection, answering control requests
// meanwhile (the desired state is read when the session opens).
func (sub *subscription) waitConn(after <-chan time.Time) (*amqp.Connection, error) {
	for {
		var changed <-chan struct{}
		if after == nil {
			conn, ch, err := sub.s.conn.current()
			if err != nil || conn != nil {
				return conn, err
			}
			changed = ch
		}
		select {
		case <-after:
			after = nil
		case <-changed:
		case reply := <-sub.ctl:
			close(reply)
		case <-sub.ctxDone:
			return nil, ErrClosed
		case <-sub.s.closing:
			return nil, ErrClosed
		}
	}
}

// session is one channel consuming one queue.
type session struct {
	sub    *subscription
	ch     *amqp.Channel
	queue  string
	closed chan *amqp.Error
	// cancels receives the tags of consumers the broker cancelled (queue deleted...).
	cancels chan string
	acks    *acker // nil with NoAck

	active    <-chan amqp.Delivery
	activeTag string
	draining  []<-chan amqp.Delivery // deliveries of cancelled consumers, still buffered
	prefetch  int                    // applied
	paused    bool                   // applied
	redeclare bool                   // the broker cancelled the consumer: declare again
	retry     *time.Timer            // re-consume after a broker cancel
	retryC    <-chan time.Time
	attempts  int

	// unsettled counts deliveries received and not yet settled (acked, nacked, rejected
	// or released). After a prefetch decrease the new consumer starts only once it is
	// below the new prefetch (waitBelow), so the messages in flight never exceed the old
	// limit and fall to the new one.
	unsettled atomic.Int64
	waitBelow int
	waiting   atomic.Bool   // waitBelow is set: settles wake serve
	wake      chan struct{} // capacity 1

	pending       *message.Message // decoded, not yet handed out
	pendingTag    uint64
	pendingCancel context.CancelFunc

	inflight sync.WaitGroup // watchers of messages handed out (Subscribe, SubscribeFunc)
	abandon  chan struct{}
	lostErr  error

	// Messages in Handle workers, settled by the workers themselves.
	jmu    sync.Mutex
	jobs   map[*job]struct{}
	jobsWG sync.WaitGroup
}

func (sub *subscription) openSession(conn *amqp.Connection) (*session, error) {
	s := sub.s
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
	}
	ss := &session{
		sub:     sub,
		ch:      ch,
		closed:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		cancels: ch.NotifyCancel(make(chan string, 8)),
		abandon: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	if sub.pool != nil {
		ss.jobs = make(map[*job]struct{})
	}
	fail := func(err error) (*session, error) {
		_ = ch.Close()
		return nil, err
	}
	if ss.queue, err = declareTopology(ch, s.cfg.Declare, sub.q); err != nil {
		return fail(err)
	}
	paused, prefetch := s.desired()
	if !s.cfg.NoAck {
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return fail(fmt.Errorf("rabbitmq: set prefetch: %w", err))
		}
		ss.acks = newAcker(ch, prefetch/2, ackFlushDelay, s.cfg.NackDelay, ss.ackError)
	}
	ss.prefetch, ss.paused = prefetch, paused
	if !paused {
		if err := ss.consume(); err != nil {
			return fail(err)
		}
	}
	return ss, nil
}

func (ss *session) ackError(op string, err error) {
	if !ss.ch.IsClosed() {
		ss.sub.logger.Error("Could not send "+op, err, nil)
	}
}

func (ss *session) consume() error {
	cfg := ss.sub.s.cfg
	tag := "mm." + cfg.Name + "." + watermill.NewShortUUID()
	d, err := ss.ch.Consume(ss.queue, tag, cfg.NoAck, cfg.Exclusive, false, false, nil)
	if err != nil {
		return fmt.Errorf("rabbitmq: consume queue %q: %w", ss.queue, err)
	}
	ss.active, ss.activeTag = d, tag
	return nil
}

// cancelConsumer cancels the active consumer; its buffered deliveries keep arriving on
// a draining channel until it is closed.
func (ss *session) cancelConsumer() {
	if ss.activeTag == "" {
		return
	}
	if err := ss.ch.Cancel(ss.activeTag, false); err != nil && !ss.ch.IsClosed() {
		// Without a cancel-ok the consumer's channel might never close: give up on this
		// channel (serve sees it closed and reconnects; the broker requeues its messages).
		ss.sub.logger.Error("Could not cancel the consumer; closing its channel", err, nil)
		_ = ss.ch.Close()
	}
	if ss.active != nil {
		ss.draining = append(ss.draining, ss.active)
	}
	ss.active, ss.activeTag = nil, ""
}

// serve hands deliveries to the subscription's channel until the subscription should
// stop (true) or the channel is lost (false).
func (ss *session) serve() bool {
	sub := ss.sub
	for fast := 0; ; fast++ {
		if ss.pending != nil && sub.fn != nil {
			msg := ss.pending
			ss.handedOut()
			sub.fn(msg)
			continue
		}
		if ss.pending != nil && sub.pool != nil {
			ss.dispatch()
			continue
		}
		// Fast path: a delivery that is ready, or a handler that is ready to take the
		// pending message, without the full select (which locks every channel in it). At
		// most 16 times in a row, so that control requests and stops are seen promptly.
		if fast < 16 {
			if ss.pending != nil {
				select {
				case sub.out <- ss.pending:
					ss.handedOut()
					continue
				default:
				}
			} else if ss.active != nil {
				select {
				case d, ok := <-ss.active:
					if ok {
						ss.prepare(d)
						continue
					}
					ss.activeClosed()
				default:
				}
			}
		}
		fast = 0
		var out chan<- *message.Message
		var in, drain <-chan amqp.Delivery
		if ss.pending != nil {
			out = sub.out
		} else {
			in = ss.active
			if len(ss.draining) > 0 {
				drain = ss.draining[0]
			}
		}
		select {
		case out <- ss.pending:
			ss.handedOut()
		case d, ok := <-in:
			if !ok {
				ss.activeClosed()
				continue
			}
			ss.prepare(d)
		case d, ok := <-drain:
			if !ok {
				ss.draining = ss.draining[1:]
				if ss.waitBelow > 0 {
					ss.resume()
				}
				continue
			}
			ss.prepare(d)
		case <-ss.wake:
			ss.resume()
		case tag, ok := <-ss.cancels:
			if !ok {
				ss.cancels = nil
			} else if tag == ss.activeTag && tag != "" {
				ss.brokerCancelled()
			}
		case <-ss.retryC:
			ss.retryC = nil
			ss.resume()
		case reply := <-sub.ctl:
			ss.apply()
			close(reply)
		case <-sub.ctxDone:
			return true
		case <-sub.s.closing:
			return true
		case err := <-ss.closed:
			if err != nil {
				ss.lostErr = err
			} else {
				ss.lostErr = amqp.ErrClosed
			}
			return false
		}
	}
}

// prepare decodes a delivery into the pending slot (or settles it right away).
func (ss *session) prepare(d amqp.Delivery) {
	s := ss.sub.s
	s.metrics.deliveries.Inc()
	if ss.acks != nil {
		ss.unsettled.Add(1)
	}
	if ss.paused && ss.acks != nil {
		ss.acks.release(d.DeliveryTag)
		ss.settledOne()
		return
	}
	msg, err := s.cfg.Marshaler.Unmarshal(d)
	if err != nil {
		s.metrics.undecodable.Inc()
		action := "rejected (dead-lettered if the queue has a dead-letter exchange)"
		if ss.acks != nil {
			ss.acks.reject(d.DeliveryTag)
			ss.settledOne()
		} else {
			action = "dropped"
		}
		ss.sub.logger.Error("Undecodable message "+action, err, watermill.LogFields{
			"queue": ss.queue, "message_id": d.MessageId, "content_type": d.ContentType,
			"content_encoding": d.ContentEncoding, "redelivered": d.Redelivered})
		return
	}
	if ss.acks == nil {
		msg.SetContext(ss.sub.msgCtx)
		ss.pending = msg
		return
	}
	ctx, cancel := context.WithCancel(ss.sub.msgCtx)
	msg.SetContext(ctx)
	ss.pending, ss.pendingTag, ss.pendingCancel = msg, d.DeliveryTag, cancel
}

// handedOut starts watching the message just handed to a handler for its ack or nack.
func (ss *session) handedOut() {
	msg, tag, cancel := ss.pending, ss.pendingTag, ss.pendingCancel
	ss.pending, ss.pendingCancel = nil, nil
	if ss.acks == nil {
		return
	}
	ss.inflight.Add(1)
	go ss.watch(msg, tag, cancel)
}

func (ss *session) watch(msg *message.Message, tag uint64, cancel context.CancelFunc) {
	defer ss.inflight.Done()
	defer cancel()
	m := &ss.sub.s.metrics
	select {
	case <-msg.Acked():
		ss.acks.ack(tag)
		m.acked.Inc()
		ss.settledOne()
	case <-msg.Nacked():
		ss.acks.nack(tag)
		m.nacked.Inc()
		ss.settledOne()
	case <-ss.abandon:
	}
}

// settledOne counts a settled delivery and wakes serve when it waits for the count to
// fall below a new prefetch.
func (ss *session) settledOne() {
	ss.unsettled.Add(-1)
	if ss.waiting.Load() {
		select {
		case ss.wake <- struct{}{}:
		default:
		}
	}
}

// releasePending requeues the message that was not handed out yet.
func (ss *session) releasePending(requeue bool) {
	if ss.pending == nil {
		return
	}
	if ss.acks != nil {
		if requeue {
			ss.acks.release(ss.pendingTag)
		}
		ss.pendingCancel()
		ss.settledOne()
	}
	ss.pending, ss.pendingCancel = nil, nil
}

// activeClosed: the active consumer's channel closed without our cancel, because the
// broker cancelled the consumer or the channel is closing.
func (ss *session) activeClosed() {
	select {
	case tag, ok := <-ss.cancels:
		if ok && tag == ss.activeTag {
			ss.brokerCancelled()
			return
		}
	default:
	}
	// The channel is closing; serve sees it on ss.closed.
	ss.active, ss.activeTag = nil, ""
}

// brokerCancelled handles a basic.cancel from the broker (the queue was deleted, or
// the node holding it went away): deliveries already received are still handed out, and
// after a backoff the topology is declared again and consuming resumes on this channel.
func (ss *session) brokerCancelled() {
	if ss.active != nil {
		ss.draining = append(ss.draining, ss.active)
	}
	ss.active, ss.activeTag = nil, ""
	ss.redeclare = true
	ss.attempts++
	ss.sub.logger.Error("The broker cancelled the consumer (queue deleted?); declaring it again", nil,
		watermill.LogFields{"queue": ss.queue, "attempt": ss.attempts})
	ss.scheduleResume()
}

func (ss *session) scheduleResume() {
	cfg := ss.sub.s.conn.cfg
	d := backoff(ss.attempts, cfg.BackoffMin, cfg.BackoffMax)
	if ss.retry == nil {
		ss.retry = time.NewTimer(d)
	} else {
		ss.retry.Reset(d)
	}
	ss.retryC = ss.retry.C
}

// resume (re)starts the consumer unless paused, declaring the topology again after a
// broker cancel.
func (ss *session) resume() {
	if ss.paused || ss.activeTag != "" || ss.retryC != nil {
		return
	}
	if ss.waitBelow > 0 {
		if len(ss.draining) > 0 || ss.unsettled.Load() >= int64(ss.waitBelow) {
			return // after a prefetch decrease: wait for messages in flight to settle
		}
		ss.waitBelow = 0
		ss.waiting.Store(false)
	}
	if ss.redeclare {
		if _, err := declareTopology(ss.ch, ss.sub.s.cfg.Declare, ss.sub.q); err != nil {
			if !ss.ch.IsClosed() {
				ss.sub.logger.Error("Could not declare the queue again", err, nil)
				ss.attempts++
				ss.scheduleResume()
			}
			return // a closed channel is seen by serve
		}
		ss.redeclare = false
	}
	if err := ss.consume(); err != nil {
		if !ss.ch.IsClosed() {
			ss.sub.logger.Error("Could not consume again", err, nil)
			ss.attempts++
			ss.scheduleResume()
		}
		return
	}
	ss.attempts = 0
}

// apply brings the session to the Subscriber's desired state (paused, prefetch).
func (ss *session) apply() {
	paused, prefetch := ss.sub.s.desired()
	if ss.acks != nil && prefetch != ss.prefetch {
		if err := ss.ch.Qos(prefetch, 0, false); err != nil {
			if !ss.ch.IsClosed() {
				ss.sub.logger.Error("Could not change the prefetch", err, nil)
			}
			return
		}
		decrease := prefetch < ss.prefetch
		ss.prefetch = prefetch
		ss.acks.setBatch(prefetch / 2)
		// The new limit applies to new consumers: replace the running one. After a
		// decrease the new one starts once fewer than prefetch messages are in flight.
		ss.cancelConsumer()
		if decrease {
			ss.waitBelow = prefetch
			ss.waiting.Store(true)
		} else {
			ss.waitBelow = 0
			ss.waiting.Store(false)
		}
	}
	ss.paused = paused
	if paused {
		ss.cancelConsumer()
		ss.releasePending(true)
		return
	}
	ss.resume()
}

// stopConsuming cancels the consumer and requeues what was received but not handed out.
// After it the session sends nothing to the subscription's channel.
func (ss *session) stopConsuming() {
	ss.releasePending(true)
	ss.paused = true
	ss.cancelConsumer()
	if ss.retry != nil {
		ss.retry.Stop()
	}
	dropped := 0
	for _, d := range ss.draining {
		for dl := range d {
			if ss.acks != nil {
				ss.acks.release(dl.DeliveryTag)
			} else {
				dropped++
			}
		}
	}
	ss.draining = nil
	if dropped > 0 {
		ss.sub.logger.Info("No-ack subscription stopped: buffered messages dropped", watermill.LogFields{"messages": dropped})
	}
}

// drain waits until deadline for the handlers to settle the messages they hold, sends
// the pending acks and nacks, and closes the channel.
func (ss *session) drain(deadline time.Time) {
	done := make(chan struct{})
	go func() {
		ss.inflight.Wait()
		ss.jobsWG.Wait()
		close(done)
	}()
	t := time.NewTimer(time.Until(deadline))
	select {
	case <-done:
	case <-t.C:
		ss.sub.logger.Error("Close timeout: messages still in handlers are returned to the queue", nil,
			watermill.LogFields{"queue": ss.queue})
		close(ss.abandon)
		ss.abandonJobs(true)
		<-done
	case <-ss.closed:
		close(ss.abandon) // channel lost: their acks cannot be sent any more
		ss.abandonJobs(false)
		<-done
	}
	t.Stop()
	if ss.acks != nil {
		ss.acks.close(!ss.ch.IsClosed())
	}
	if err := ss.ch.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		ss.sub.logger.Debug("Closing the channel", watermill.LogFields{"error": err.Error()})
	}
}

// lost cleans up after the channel died: messages in handlers will be redelivered by
// the broker, so their watchers stop and their contexts are cancelled.
func (ss *session) lost() {
	ss.sub.logger.Error("Subscription channel lost; reconnecting", ss.lostErr, watermill.LogFields{"queue": ss.queue})
	ss.releasePending(false)
	if ss.retry != nil {
		ss.retry.Stop()
	}
	close(ss.abandon)
	ss.abandonJobs(false)
	ss.inflight.Wait()
	if ss.acks != nil {
		ss.acks.close(false)
	}
}
