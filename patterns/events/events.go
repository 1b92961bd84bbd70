package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/wire"
)

// Sentinel errors. Errors returned by Emit and Listen wrap them (match with errors.Is).
var (
	// ErrDuplicateListen: this Bus already listens to the same target and pattern, or a
	// durable listen with the same name is already running.
	ErrDuplicateListen = errors.New("events: already listening to this target and pattern on this instance")
	// ErrNoPublisher: Emit on a Bus built without a Publisher.
	ErrNoPublisher = errors.New("events: no publisher configured")
	// ErrNoSubscriber: Listen on a Bus built without a Subscriber and a Router.
	ErrNoSubscriber = errors.New("events: no subscriber and router configured")
	// ErrInvalid: an empty target, route or pattern, or a reserved header name.
	ErrInvalid = errors.New("events: invalid argument")
	// ErrRouterClosed: Listen or Start on a closed router.
	ErrRouterClosed = errors.New("events: router closed")
	// ErrClosed: Listen or Start after Bus.Close.
	ErrClosed = errors.New("events: bus closed")
)

// closeTimeout bounds Bus.Close.
const closeTimeout = 30 * time.Second

// Config configures a Bus. Only Service is required; a Bus without Publisher cannot
// Emit, a Bus without Subscriber and Router cannot Listen.
type Config struct {
	// Service is this instance's service name; it names the listen queues
	// (q.pubSub.<Service>.<uuid>). Required.
	Service string

	// Publisher sends events. The topic it receives is the routing key
	// (<target>.<route>); it must publish to the x.pubSub topic exchange (declared topic,
	// durable), not mandatory, and return only once the broker confirmed the message
	// (rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: x.pubSub topic
	// durable}). nil: Emit returns ErrNoPublisher.
	Publisher message.Publisher

	// Subscriber consumes listen queues. The topic it receives is the queue name; it must
	// declare that queue as Bus.Queue(topic) describes (the flags, and the binding to
	// x.pubSub with the listen's pattern), and declare x.pubSub (topic, durable).
	// nil: Listen returns ErrNoSubscriber.
	Subscriber message.Subscriber

	// Router runs the listeners: each Listen adds a consumer handler to it, before or
	// while it runs. Required with Subscriber.
	Router *message.Router

	// StartHandlers starts the handlers added to Router while it runs (Watermill runs
	// the ones added before Run itself); the Bus calls it after adding a listener's
	// handler to a running Router. nil means Router.RunHandlers(context.Background()):
	// those handlers then stop when the Router is closed, not when the ctx given to
	// Router.Run is cancelled, so stop such a Router with Close. Pass a func that calls
	// Router.RunHandlers with the ctx you gave Run to tie them to that ctx.
	StartHandlers func() error

	// Persistent makes Emit publish events persistent (deliveryMode 2), so that events
	// waiting in a durable listen's queue (Durable) survive a broker restart. It costs a
	// disk write per event and durable queue; queues of non-durable listens are not
	// durable, so their events are never written. Node ignores deliveryMode. false
	// means transient events, as Node emits them: a broker restart drops the events
	// waiting in durable queues (the queues and their bindings stay).
	Persistent bool

	// Logger; nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.StartHandlers == nil && c.Router != nil {
		r := c.Router
		c.StartHandlers = func() error { return r.RunHandlers(context.Background()) }
	}
}

// Validate reports every configuration problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Service == "" {
		errs = append(errs, errors.New("events: Config.Service is required"))
	}
	if (c.Subscriber == nil) != (c.Router == nil) {
		errs = append(errs, errors.New("events: Config.Subscriber and Config.Router go together"))
	}
	if c.Publisher == nil && c.Subscriber == nil {
		errs = append(errs, errors.New("events: Config needs a Publisher, or a Subscriber and a Router, or both"))
	}
	return errors.Join(errs...)
}

// Queue describes the queue a listen consumes, independent of the transport: the
// subscriber declares it with these flags and binds it to Exchange with Key.
type Queue struct {
	Name       string
	Durable    bool
	Exclusive  bool
	AutoDelete bool
	Exchange   string // always wire.EventExchange
	Key        string // binding key: <target>.<pattern>, with AMQP topic wildcards
}

type listenKey struct{ target, pattern string }

// Bus emits events and runs listeners for one service instance. It is safe for
// concurrent use.
type Bus struct {
	cfg    Config
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	closed  bool
	listens map[listenKey]*Listener // running or starting listeners
	durable map[string]*Listener    // running durable listeners by queue name
	queues  map[string]Queue        // topology by queue name (= subscriber topic)
}

// New returns a Bus. It does no I/O and starts no goroutine.
func New(cfg Config) (*Bus, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Bus{
		cfg:     cfg,
		logger:  cfg.Logger.With(watermill.LogFields{"component": "events", "service": cfg.Service}),
		listens: map[listenKey]*Listener{},
		durable: map[string]*Listener{},
		queues:  map[string]Queue{},
	}, nil
}

// Queue returns the declaration of the listen queue named topic, for the subscriber's
// topology function (rabbitmq.SubscriberConfig.Queue). ok is false for a topic that is
// no current listen queue of this Bus.
func (b *Bus) Queue(topic string) (q Queue, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q, ok = b.queues[topic]
	return q, ok
}

// Emit publishes body as event <target>.<route> on x.pubSub and returns once the broker
// confirmed it (or ctx ends, or the publisher fails). Every queue bound with a matching
// key gets a copy; with no queue bound the event is dropped by the broker, as in Node.
//
// body: json.RawMessage and []byte are sent as they are (they must be JSON); any other
// value is encoded with wire.JSON (nil is sent as ""). headers are user headers (string
// values); names starting with "mm.", "mms." or "__mms" are reserved.
func (b *Bus) Emit(ctx context.Context, target, route string, body any, headers map[string]string) error {
	if b.cfg.Publisher == nil {
		return ErrNoPublisher
	}
	if target == "" || route == "" {
		return fmt.Errorf("%w: emit needs a target and a route (got %q, %q)", ErrInvalid, target, route)
	}
	msg, err := newEvent(ctx, body, headers)
	if err != nil {
		return err
	}
	if b.cfg.Persistent {
		msg.Metadata.Set(wire.MetaPersistent, "true")
	}
	key := wire.EventKey(target, route)
	if err := b.cfg.Publisher.Publish(key, msg); err != nil {
		return fmt.Errorf("events: emit %s: %w", key, err)
	}
	return nil
}

// newEvent builds the Watermill message of an event: payload, user headers and no
// mms.* field, so the codec sends __mms as an empty table.
func newEvent(ctx context.Context, body any, headers map[string]string) (*message.Message, error) {
	payload, err := encodeBody(body)
	if err != nil {
		return nil, err
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	for k, v := range headers {
		if reservedHeader(k) {
			return nil, fmt.Errorf("%w: header %q uses a reserved name", ErrInvalid, k)
		}
		msg.Metadata.Set(k, v)
	}
	if ctx != nil {
		msg.SetContext(ctx)
	}
	return msg, nil
}

func encodeBody(body any) ([]byte, error) {
	switch b := body.(type) {
	case json.RawMessage:
		if b == nil {
			return wire.JSON(nil)
		}
		return b, nil
	case []byte:
		if b == nil {
			return wire.JSON(nil)
		}
		return b, nil
	default:
		p, err := wire.JSON(body)
		if err != nil {
			return nil, fmt.Errorf("%w: body: %v", ErrInvalid, err)
		}
		return p, nil
	}
}

// reservedHeader reports header names that the codec maps to AMQP properties or __mms.
func reservedHeader(k string) bool {
	return k == "" || strings.HasPrefix(k, "mm.") || strings.HasPrefix(k, wire.MetaMMSPrefix) || k == "__mms"
}

// RoutingKey returns the routing key an event was emitted with (<target>.<route>).
func RoutingKey(msg *message.Message) string { return msg.Metadata.Get(wire.MetaRoutingKey) }

// ListenOption changes one Listen.
type ListenOption func(*listenOptions)

type listenOptions struct {
	durable     bool
	durableName string
}

// Durable makes the listen durable and shared: instead of an exclusive queue per listen
// (events emitted while it is stopped are lost), it consumes the durable queue
// DurableQueue(service, name), which survives restarts of the listener, of the
// instance and of the broker (the events waiting in it survive a broker restart only
// when they were emitted persistent: Config.Persistent), and whose events are shared
// among the service's instances (competing consumers: each event is handled once per
// service, not once per instance). name "" means "<target>.<pattern>". The queue is
// bound with <target>.<pattern> at every start; a binding made earlier with another
// pattern stays (see the package doc). Not part of the Node protocol; Node peers
// emitting the events are unaffected.
func Durable(name string) ListenOption {
	return func(o *listenOptions) { o.durable, o.durableName = true, name }
}

// DurableQueue returns the queue of a durable listen: q.pubSub.<service>.durable.<name>.
func DurableQueue(service, name string) string {
	return "q.pubSub." + service + ".durable." + name
}

// Listen starts a listener for events whose routing key matches <target>.<pattern>
// (AMQP topic wildcards: "*" one word, "#" zero or more words) and runs h for each one
// on the Router. It returns ErrDuplicateListen when this Bus already listens to the
// same target and pattern (or to the same durable name).
//
// h's ctx is msg.Context(). An event whose handler returns an error or panics is
// logged and dropped (acked): events are not retried; use a task for work that must be.
// A handler that nacks the message itself (msg.Nack(), as middleware/qos does with
// messages still waiting for a slot at shutdown) gives it back to the queue.
// On a running Router, Listen returns once the subscriber declared and bound the queue:
// during a connection outage it blocks until the connection is back or the subscriber
// is closed (Router.Close waits for it too). If the Router is not running yet, the listener starts when it does
// (see Listener.Started).
func (b *Bus) Listen(target, pattern string, h message.NoPublishHandlerFunc, opts ...ListenOption) (*Listener, error) {
	if b.cfg.Subscriber == nil {
		return nil, ErrNoSubscriber
	}
	if target == "" || pattern == "" || h == nil {
		return nil, fmt.Errorf("%w: listen needs a target, a pattern and a handler", ErrInvalid)
	}
	var o listenOptions
	for _, opt := range opts {
		opt(&o)
	}
	l := &Listener{bus: b, target: target, pattern: pattern, h: h}
	if o.durable {
		name := o.durableName
		if name == "" {
			name = target + "." + pattern
		}
		l.durableQueue = DurableQueue(b.cfg.Service, name)
	}
	l.logger = b.logger.With(watermill.LogFields{"binding_key": l.key()})
	if err := l.Start(); err != nil {
		return nil, err
	}
	return l, nil
}

// reserve claims the listen slot of l and records its queue topology.
func (b *Bus) reserve(l *Listener, q Queue) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	k := listenKey{l.target, l.pattern}
	if other, ok := b.listens[k]; ok && other != l {
		return fmt.Errorf("%w: %s", ErrDuplicateListen, l.key())
	}
	if l.durableQueue != "" {
		if other, ok := b.durable[l.durableQueue]; ok && other != l {
			return fmt.Errorf("%w: durable queue %s", ErrDuplicateListen, l.durableQueue)
		}
		b.durable[l.durableQueue] = l
	}
	b.listens[k] = l
	b.queues[q.Name] = q
	return nil
}

// release frees the listen slot of l.
func (b *Bus) release(l *Listener, queue string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.listens[listenKey{l.target, l.pattern}] == l {
		delete(b.listens, listenKey{l.target, l.pattern})
	}
	if l.durableQueue != "" && b.durable[l.durableQueue] == l {
		delete(b.durable, l.durableQueue)
	}
	delete(b.queues, queue)
}

// Close stops every running listener (waiting up to 30 s in all until their handlers
// take no more events; events already in a handler finish on the Router's goroutines)
// and makes later Listen and Start calls fail with ErrClosed. It does not close the
// Router, the Publisher or the Subscriber. Emit keeps working. Close is idempotent.
func (b *Bus) Close() error {
	b.mu.Lock()
	b.closed = true
	running := make([]*Listener, 0, len(b.listens))
	for _, l := range b.listens {
		running = append(running, l)
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	var errs []error
	for _, l := range running {
		errs = append(errs, l.Stop(ctx))
	}
	return errors.Join(errs...)
}

// Listener is one listen: a consumer handler on the Router. It is safe for concurrent
// use.
type Listener struct {
	bus          *Bus
	target       string
	pattern      string
	durableQueue string // "" for a per-instance exclusive listen
	h            message.NoPublishHandlerFunc
	logger       watermill.LoggerAdapter

	mu      sync.Mutex
	handler *message.Handler // nil while stopped
	gate    *gatedSubscriber // of the current run
	queue   string           // queue of the current run
}

func (l *Listener) key() string { return wire.EventKey(l.target, l.pattern) }

// Key returns the binding key, <target>.<pattern>.
func (l *Listener) Key() string { return l.key() }

// Queue returns the name of the queue the listener consumes (a new one after each
// Start for a non-durable listen), "" while stopped.
func (l *Listener) Queue() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queue
}

// Started returns a channel that is closed once the Router started the current run's
// handler, that is once the subscriber declared and bound its queue (on a running
// Router that is before Listen and Start return). nil while stopped.
func (l *Listener) Started() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handler == nil {
		return nil
	}
	return l.handler.Started()
}

// Running reports whether the listener is started (its handler may still wait for the
// Router to run).
func (l *Listener) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handler != nil
}

// Start starts a stopped listener again (Listen starts it the first time). A
// non-durable listener gets a new queue: events emitted while it was stopped are lost.
// A durable one resumes its durable queue and receives what arrived meanwhile. Start on
// a running listener is a no-op. It fails with ErrDuplicateListen if the slot was taken
// while stopped, and with the subscriber's error if the running Router cannot
// subscribe (for example a durable queue declared elsewhere with other flags).
func (l *Listener) Start() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handler != nil {
		return nil
	}
	b := l.bus
	r := b.cfg.Router
	if r.IsClosed() {
		return ErrRouterClosed
	}
	q := Queue{Exchange: wire.EventExchange, Key: l.key()}
	if l.durableQueue != "" {
		q.Name, q.Durable = l.durableQueue, true
	} else {
		q.Name, q.Exclusive, q.AutoDelete = wire.ListenQueue(b.cfg.Service, uuid.NewString()), true, true
	}
	if err := b.reserve(l, q); err != nil {
		return err
	}
	gate := &gatedSubscriber{Subscriber: b.cfg.Subscriber}
	// Handler names must be unique in a router; a durable queue is reused, so add a suffix.
	name := "events.listen " + q.Name + " " + uuid.NewString()[:8]
	handler, err := addHandler(r, b.cfg.StartHandlers, name, q.Name, gate, l.handle)
	if err != nil {
		gate.abandon(r, b.cfg.StartHandlers, handler != nil && !started(handler))
		b.release(l, q.Name)
		return err
	}
	l.handler, l.gate, l.queue = handler, gate, q.Name
	l.logger.Debug("Listening", watermill.LogFields{"queue": q.Name})
	return nil
}

// addHandler adds a consumer handler and runs it at once when the router already runs
// (Watermill runs handlers added earlier when Run starts). AddHandler's panic on a
// duplicate name is turned into an error.
func addHandler(r *message.Router, start func() error, name, topic string, sub message.Subscriber, fn message.NoPublishHandlerFunc) (h *message.Handler, err error) {
	defer func() {
		if p := recover(); p != nil {
			h, err = nil, fmt.Errorf("events: add handler %s: %v", name, p)
		}
	}()
	h = r.AddConsumerHandler(name, topic, sub, fn)
	if r.IsRunning() { // Running() is closed after Run set its running flag: no data race
		if err := start(); err != nil && !started(h) {
			return h, fmt.Errorf("events: start handler %s: %w", name, err)
		}
	}
	return h, nil
}

func started(h *message.Handler) bool {
	select {
	case <-h.Started():
		return true
	default:
		return false
	}
}

// gatedSubscriber lets a listener give up its handler whatever state the Router has it
// in: a Watermill router cannot remove a handler it has not started, so once abandoned,
// Subscribe hands the router a closed channel (the handler ends as soon as it starts),
// and a subscription already made is cancelled.
type gatedSubscriber struct {
	message.Subscriber

	mu        sync.Mutex
	abandoned bool
	cancel    context.CancelFunc
}

func (g *gatedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	g.mu.Lock()
	if g.abandoned {
		g.mu.Unlock()
		ch := make(chan *message.Message)
		close(ch)
		return ch, nil
	}
	ctx, g.cancel = context.WithCancel(ctx)
	g.mu.Unlock()
	return g.Subscriber.Subscribe(ctx, topic)
}

// abandon gives up the handler. With flush (the handler has not started), a running
// router starts it at once, and so ends it.
func (g *gatedSubscriber) abandon(r *message.Router, start func() error, flush bool) {
	g.mu.Lock()
	g.abandoned = true
	if g.cancel != nil {
		g.cancel()
	}
	g.mu.Unlock()
	if flush && r.IsRunning() && !r.IsClosed() {
		_ = start() // starts (and so ends) the abandoned handler
	}
}

// Stop stops the listener and waits (bounded by ctx) until its handler has stopped
// taking events. The consumer is cancelled: a non-durable listen's queue is then
// auto-deleted by the broker; a durable listen's queue keeps collecting events. Stop on
// a stopped listener is a no-op; so is Stop before the Router runs (the handler then
// ends as soon as the Router starts it).
//
// Watermill closes a router whose handlers have all stopped: stopping the last handler
// of a router closes it.
func (l *Listener) Stop(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.handler
	if h == nil {
		return nil
	}
	l.gate.abandon(l.bus.cfg.Router, l.bus.cfg.StartHandlers, !started(h))
	if started(h) {
		h.Stop()
		select {
		case <-h.Stopped():
		case <-ctx.Done():
			return fmt.Errorf("events: stop %s: %w", l.key(), ctx.Err())
		}
	}
	l.bus.release(l, l.queue)
	l.handler, l.gate, l.queue = nil, nil, ""
	l.logger.Debug("Stopped listening", nil)
	return nil
}

// handle runs the user's handler; errors and panics are logged and the event acked.
func (l *Listener) handle(msg *message.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			l.logger.Error("Event handler panicked; event dropped", fmt.Errorf("panic: %v", p),
				watermill.LogFields{"routing_key": RoutingKey(msg), "message_uuid": msg.UUID})
			err = nil
		}
	}()
	if herr := l.h(msg); herr != nil {
		fields := watermill.LogFields{"routing_key": RoutingKey(msg), "message_uuid": msg.UUID}
		select {
		case <-msg.Nacked(): // the handler (or a middleware in it) gave the event back
			l.logger.Debug("Event nacked by its handler; requeued", fields.Add(watermill.LogFields{"error": herr.Error()}))
		default:
			l.logger.Error("Event handler failed; event dropped", herr, fields)
		}
	}
	return nil
}
