package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/wire"
)

// DefaultTimeout is the timeout of a call whose ctx has no deadline and that has no
// WithTimeout option, unless ClientConfig.Timeout says otherwise.
const DefaultTimeout = 120 * time.Second

// ClientConfig configures a Client.
type ClientConfig struct {
	// Service is the caller's own service name; it names the reply queue
	// q.replyQueue.<Service>.<InstanceID>. Required.
	Service string
	// InstanceID identifies this instance; "" means a new UUID v4.
	InstanceID string
	// Publisher sends the requests to the default exchange (Publish topic = the request
	// queue). It must publish with mandatory set and publisher confirms, and return an
	// error wrapping wire.ErrUnroutable when the broker returns the message: that is how
	// a request to a route nobody serves fails at once (rabbitmq.Publisher with
	// Mandatory does). With another publisher such a call ends with ErrTimeout. When
	// the publisher also has the method PublishUnconfirmed(topic string, msg
	// *message.Message, onReturn func()) (lost <-chan struct{}, forget func(), err
	// error) (rabbitmq.Publisher does), requests go through it instead, without
	// waiting for the broker's confirm (see the package documentation). Required.
	Publisher message.Publisher
	// Timeout of a call whose ctx has no deadline and that has no WithTimeout option.
	// 0 means DefaultTimeout (120 s).
	Timeout time.Duration
	// Logger; nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer for the client's metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

func (c *ClientConfig) setDefaults() {
	if c.InstanceID == "" {
		c.InstanceID = uuid.NewString()
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of the config at once.
func (c ClientConfig) Validate() error {
	var errs []error
	if err := ValidateName("service", c.Service); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateName("instance id", c.InstanceID); err != nil {
		errs = append(errs, err)
	}
	if q := wire.ReplyQueue(c.Service, c.InstanceID); len(q) > maxQueueName {
		errs = append(errs, fmt.Errorf("%w: reply queue name %q is longer than %d bytes", ErrInvalidName, q, maxQueueName))
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("rpc: ClientConfig.Publisher is required"))
	}
	if c.Timeout < 0 {
		errs = append(errs, errors.New("rpc: ClientConfig.Timeout is negative"))
	}
	return errors.Join(errs...)
}

// Client makes requests to other services and routes their replies back to the
// callers. Replies arrive on the instance's reply queue (ReplyQueue) and are handed to
// HandleReply by the reply handler that AddHandler adds to a router. A Client is safe
// for concurrent use; its only goroutine is the reply handler's (see AddHandler).
type Client struct {
	cfg        ClientConfig
	replyQueue string
	logger     watermill.LoggerAdapter
	m          *clientMetrics

	ready  atomic.Pointer[chan struct{}] // closed once the reply handler consumes
	closed chan struct{}
	once   sync.Once

	mu      sync.Mutex
	pending map[string]*call // by correlation id

	routes sync.Map // route -> *routeMetrics

	qmu    sync.RWMutex
	queues map[[2]string]string // {service, route} -> request queue, for valid names only

	expiration atomic.Pointer[expirationText] // the last mm.expiration sent, formatted
}

// routeMetrics are the client metrics of one route, resolved once.
type routeMetrics struct {
	outcomes map[string]prometheus.Counter
	latency  prometheus.Observer
}

// maxCachedQueues bounds Client.queues (names beyond it are built on every call).
const maxCachedQueues = 1024

// requestQueue returns the validated request queue of service and route, from the cache
// when the pair was used before.
func (c *Client) requestQueue(service, route string) (string, error) {
	key := [2]string{service, route}
	c.qmu.RLock()
	q, ok := c.queues[key]
	c.qmu.RUnlock()
	if ok {
		return q, nil
	}
	q, err := requestQueue(service, route)
	if err != nil {
		return "", err
	}
	c.qmu.Lock()
	if c.queues == nil {
		c.queues = map[[2]string]string{}
	}
	if len(c.queues) < maxCachedQueues {
		c.queues[key] = q
	}
	c.qmu.Unlock()
	return q, nil
}

// expirationText is an mm.expiration value and its decimal form.
type expirationText struct {
	ms   int64
	text string
}

// expirationString formats ms, reusing the last result: calls without a context
// deadline all send the same timeout.
func (c *Client) expirationString(ms int64) string {
	if e := c.expiration.Load(); e != nil && e.ms == ms {
		return e.text
	}
	e := &expirationText{ms: ms, text: strconv.FormatInt(ms, 10)}
	c.expiration.Store(e)
	return e.text
}

func (c *Client) routeMetrics(route string) *routeMetrics {
	if rm, ok := c.routes.Load(route); ok {
		return rm.(*routeMetrics)
	}
	rm := &routeMetrics{outcomes: map[string]prometheus.Counter{}, latency: c.m.latency.WithLabelValues(route)}
	for _, o := range []string{OutcomeOK, OutcomeError, OutcomeTimeout, OutcomeUnroutable, OutcomeCanceled} {
		rm.outcomes[o] = c.m.requests.WithLabelValues(route, o)
	}
	actual, _ := c.routes.LoadOrStore(route, rm)
	return actual.(*routeMetrics)
}

// NewClient returns a Client. It does no I/O.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newClientMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("rpc: client metrics: %w", err)
	}
	return &Client{
		cfg:        cfg,
		replyQueue: wire.ReplyQueue(cfg.Service, cfg.InstanceID),
		logger:     cfg.Logger.With(watermill.LogFields{"component": "rpc_client", "service": cfg.Service}),
		m:          m,
		closed:     make(chan struct{}),
		pending:    map[string]*call{},
	}, nil
}

// InstanceID returns the id of this instance (part of the reply queue name).
func (c *Client) InstanceID() string { return c.cfg.InstanceID }

// ReplyQueue returns the instance's reply queue, q.replyQueue.<service>.<instanceId>:
// the topic to subscribe HandleReply to. The queue must be declared exclusive, with no
// arguments, and consumed without acknowledgements by a single consumer.
func (c *Client) ReplyQueue() string { return c.replyQueue }

// AddHandler adds the reply handler to r as a consumer handler named and subscribed
// like ReplyQueue, consuming from sub (which must declare the queue as ReplyQueue says
// and consume it without acks). Requests wait until that handler runs (its Started
// channel), bounded by their ctx. If r is already running, call r.RunHandlers
// afterwards. Add the reply handler once per Client.
//
// The router subscribes, starts and stops the handler as usual, but each reply is
// handed to HandleReply (and acked) by the goroutine that reads the subscription, as
// it arrives, instead of going through the router's per-message goroutine and
// middleware: replies are dispatched in delivery order with two goroutine hand-offs
// fewer, and router middleware and subscriber decorators do not see them.
func (c *Client) AddHandler(r *message.Router, sub message.Subscriber) (*message.Handler, error) {
	if _, dup := r.Handlers()[c.replyQueue]; dup {
		return nil, fmt.Errorf("rpc: reply handler %q is already on this router", c.replyQueue)
	}
	h := r.AddConsumerHandler(c.replyQueue, c.replyQueue, replySubscriber{c: c, sub: sub}, c.HandleReply)
	started := h.Started()
	c.ready.Store(&started)
	return h, nil
}

// replySubscriber dispatches the replies of the subscription to the Client itself; the
// channel it returns to the router carries no message and is closed when the
// subscription's is.
type replySubscriber struct {
	c   *Client
	sub message.Subscriber
}

// funcSubscriber is implemented by rabbitmq.Subscriber: messages are handed to fn on
// the subscription's goroutine.
type funcSubscriber interface {
	SubscribeFunc(ctx context.Context, topic string, fn func(*message.Message)) (done <-chan struct{}, err error)
}

func (rs replySubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if fs, ok := rs.sub.(funcSubscriber); ok {
		done, err := fs.SubscribeFunc(ctx, topic, func(msg *message.Message) {
			_ = rs.c.HandleReply(msg)
			msg.Ack()
		})
		if err != nil {
			return nil, err
		}
		out := make(chan *message.Message)
		go func() {
			<-done
			close(out)
		}()
		return out, nil
	}
	in, err := rs.sub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for msg := range in {
			_ = rs.c.HandleReply(msg)
			msg.Ack()
		}
	}()
	return out, nil
}

func (rs replySubscriber) Close() error { return rs.sub.Close() }

// HandleReply is the Watermill handler of the reply queue: it hands each reply to the
// call waiting for its correlation id, and drops (and counts) replies no call waits
// for. It never blocks and always returns nil. When you add it to a router yourself
// (instead of AddHandler), make sure it runs before the first request, or the replies
// to it are lost.
func (c *Client) HandleReply(msg *message.Message) error {
	id := msg.Metadata.Get(wire.MetaCorrelationID)
	c.mu.Lock()
	cl := c.pending[id]
	c.mu.Unlock()
	if cl == nil {
		c.m.dropped.Inc()
		c.logger.Debug("Reply for no waiting call: dropped", watermill.LogFields{"correlation_id": id})
		return nil
	}
	cl.push(msg)
	return nil
}

// Close makes calls in progress and later calls fail with ErrClosed. It does not close
// the Publisher. Idempotent.
func (c *Client) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// unconfirmedPublisher is implemented by rabbitmq.Publisher: a publish that does not
// wait for the broker's confirm and reports a mandatory message's return.
type unconfirmedPublisher interface {
	PublishUnconfirmed(topic string, msg *message.Message, onReturn func()) (lost <-chan struct{}, forget func(), err error)
}

// call is one request waiting for its replies.
type call struct {
	mu     sync.Mutex
	queue  []*message.Message
	ret    bool          // the request came back unroutable
	notify chan struct{} // cap 1: something was queued
}

func (cl *call) push(msg *message.Message) {
	cl.mu.Lock()
	cl.queue = append(cl.queue, msg)
	cl.mu.Unlock()
	select {
	case cl.notify <- struct{}{}:
	default:
	}
}

// unroutable records that the broker returned the request.
func (cl *call) unroutable() {
	cl.mu.Lock()
	cl.ret = true
	cl.mu.Unlock()
	select {
	case cl.notify <- struct{}{}:
	default:
	}
}

func (cl *call) returned() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.ret
}

func (cl *call) queued() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return len(cl.queue) > 0
}

func (cl *call) take() []*message.Message {
	cl.mu.Lock()
	q := cl.queue
	cl.queue = nil
	cl.mu.Unlock()
	return q
}

// Reply is one reply message: the final reply, a stream chunk, or a stream's end.
type Reply struct {
	// Body is the JSON body (already gunzipped). Use Decode to unmarshal it.
	Body json.RawMessage
	// IDRequest is the request id the server copied back.
	IDRequest string
	// Sequence is the reply's __mms.sequence (0 for a plain reply).
	Sequence int64
	// Stream is true for a chunk or the end of a streamed reply.
	Stream bool
	// End is true for the final reply (a plain reply, or the end of a stream).
	End bool
	// Metadata holds the reply's headers and wire properties (mm.*, mms.* keys).
	Metadata message.Metadata
}

// Decode unmarshals the JSON body into v.
func (r *Reply) Decode(v any) error { return json.Unmarshal(r.Body, v) }

// Header returns the header key of the reply ("" when absent).
func (r *Reply) Header(key string) string { return r.Metadata.Get(key) }

// CallOption sets a per-call option of Request and Stream.
type CallOption func(*callOptions)

type callOptions struct {
	timeout   time.Duration
	headers   map[string]string
	idRequest string
	onChunk   func(*Reply) error
}

// WithTimeout sets the call's timeout (re-armed on every stream chunk). The ctx still
// bounds the whole call; the timeout sent with the request is the smaller of the two.
func WithTimeout(d time.Duration) CallOption {
	return func(o *callOptions) { o.timeout = d }
}

// WithHeaders adds user headers to the request (sent as AMQP string headers). Keys
// starting with "mm." or "mms." are reserved for the wire and not sent; idRequest is
// set with WithIDRequest.
func WithHeaders(h map[string]string) CallOption {
	return func(o *callOptions) {
		if o.headers == nil {
			o.headers = make(map[string]string, len(h))
		}
		maps.Copy(o.headers, h)
	}
}

// WithIDRequest sets the request id (header idRequest) instead of a new UUID v4. The
// server copies it to its replies; use it to trace a request across services.
func WithIDRequest(id string) CallOption {
	return func(o *callOptions) { o.idRequest = id }
}

// OnChunk makes Request call fn with each chunk of a streamed reply, in sequence
// order, on the calling goroutine; Request then returns the stream's end message.
// An error from fn ends the call with that error. Without OnChunk, Request skips the
// chunks.
func OnChunk(fn func(*Reply) error) CallOption {
	return func(o *callOptions) { o.onChunk = fn }
}

// Request calls route of service with body (encoded as EncodeBody says) and waits for
// the final reply. The call's timeout is the ctx deadline, else WithTimeout, else
// ClientConfig.Timeout; it travels with the request (AMQP expiration and __mms.eat), so
// the server drops the request once the caller gave up. Errors:
//
//   - ErrUnroutable (at once): nobody serves the route;
//   - ErrTimeout (also matching context.DeadlineExceeded): no reply in time;
//   - the ctx's error when it is cancelled: the call is freed at once;
//   - *RemoteError (errors.As): the handler failed; it carries the remote message,
//     codeString, code and info;
//   - ErrClosed, ErrInvalidName, ErrProtocol, or the publisher's error.
//
// For a streamed reply, Request returns the end message and passes the chunks to
// OnChunk (if given); the timeout is re-armed on every chunk.
func (c *Client) Request(ctx context.Context, service, route string, body any, opts ...CallOption) (*Reply, error) {
	if len(opts) == 0 {
		return c.do(ctx, service, route, body, &noCallOptions) // do only reads it: no copy to allocate
	}
	o := callOptions{}
	for _, opt := range opts {
		opt(&o)
	}
	return c.do(ctx, service, route, body, &o)
}

// noCallOptions are the options of a call given none. Read only.
var noCallOptions callOptions

// errStopped ends a Stream whose consumer stopped iterating.
var errStopped = errors.New("rpc: iteration stopped")

// Stream calls route of service like Request and yields every reply message in
// sequence order: the chunks of a streamed reply, then its end message (End true), or
// a single reply for a plain one. An error is yielded last, with a nil *Reply.
// Stopping the iteration early abandons the call (later chunks are dropped). The call
// starts when the iteration does; each iteration makes a new call.
func (c *Client) Stream(ctx context.Context, service, route string, body any, opts ...CallOption) iter.Seq2[*Reply, error] {
	return func(yield func(*Reply, error) bool) {
		o := callOptions{}
		for _, opt := range opts {
			opt(&o)
		}
		stopped := false
		o.onChunk = func(r *Reply) error {
			if !yield(r, nil) {
				stopped = true
				return errStopped
			}
			return nil
		}
		end, err := c.do(ctx, service, route, body, &o)
		switch {
		case stopped:
		case err != nil:
			yield(nil, err)
		default:
			yield(end, nil)
		}
	}
}

// do makes one call.
func (c *Client) do(ctx context.Context, service, route string, body any, o *callOptions) (reply *Reply, err error) {
	queue, err := c.requestQueue(service, route)
	if err != nil {
		return nil, err
	}
	payload, err := EncodeBody(body)
	if err != nil {
		return nil, fmt.Errorf("rpc %s.%s: encode body: %w", service, route, err)
	}
	start := time.Now()
	timeout := c.cfg.Timeout
	if o.timeout > 0 {
		timeout = o.timeout
	}
	if dl, ok := ctx.Deadline(); ok {
		if left := dl.Sub(start); left < timeout || o.timeout <= 0 {
			timeout = left
		}
	}

	outcome := OutcomeOK
	rm := c.routeMetrics(route)
	c.m.inFlight.Inc()
	defer func() {
		c.m.inFlight.Dec()
		rm.outcomes[outcome].Inc()
		rm.latency.Observe(time.Since(start).Seconds())
	}()
	fail := func(o string, e error) (*Reply, error) {
		outcome = o
		return nil, fmt.Errorf("rpc %s.%s: %w", service, route, e)
	}
	timedOut := func() (*Reply, error) {
		return fail(OutcomeTimeout, fmt.Errorf("%w after %v (%w)", ErrTimeout, timeout.Round(time.Millisecond), context.DeadlineExceeded))
	}
	ctxDone := func() (*Reply, error) {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return timedOut()
		}
		return fail(OutcomeCanceled, context.Cause(ctx))
	}
	if timeout <= 0 {
		return timedOut()
	}
	// callCtx ends at the call's deadline (or ctx's, if earlier): it bounds publishing
	// (which waits for the connection during an outage) and the wait for the reply
	// until a stream chunk arrives; from then on a timer re-armed by every chunk does.
	callCtx := ctx
	if dl, ok := ctx.Deadline(); !ok || dl.After(start.Add(timeout)) {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithDeadline(ctx, start.Add(timeout))
		defer cancel()
	}
	expired := callCtx.Done()
	var timer *time.Timer // the stream's, once a chunk came
	var timerC <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// callExpired tells callCtx's end by ctx's end or timeout.
	callExpired := func() (*Reply, error) {
		if ctx.Err() != nil {
			return ctxDone()
		}
		return timedOut()
	}
	if ready := c.ready.Load(); ready != nil {
		select {
		case <-*ready:
		case <-ctx.Done():
			return ctxDone()
		case <-c.closed:
			return fail(OutcomeCanceled, ErrClosed)
		case <-expired:
			return callExpired()
		}
	}
	select {
	case <-c.closed:
		return fail(OutcomeCanceled, ErrClosed)
	default:
	}

	ms := timeout.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	id := newID()
	msg := message.NewMessage(id, payload)
	md := msg.Metadata
	for k, v := range o.headers {
		if !reservedKey(k) {
			md[k] = v
		}
	}
	idRequest := o.idRequest
	if idRequest == "" {
		idRequest = newID()
	}
	md[wire.HeaderIDRequest] = idRequest
	md[wire.MetaCorrelationID] = id
	md[wire.MetaReplyTo] = c.replyQueue
	md[wire.MetaExpiration] = c.expirationString(ms)
	iat := start.UnixMilli()
	md[wire.MetaMMSRoute] = route
	md[wire.MetaMMSIAT] = strconv.FormatInt(iat, 10)
	md[wire.MetaMMSEAT] = strconv.FormatInt(iat+ms, 10)

	cl := &call{notify: make(chan struct{}, 1)}
	c.mu.Lock()
	c.pending[id] = cl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	// publish sends the request. With a publisher that can report returns without
	// confirms (rabbitmq.Publisher), it does not wait for the broker's confirm: the
	// reply tells that the request arrived, a return that it was unroutable, and lost
	// that it may not have reached the broker.
	up, unconfirmed := c.cfg.Publisher.(unconfirmedPublisher)
	var lost <-chan struct{}
	forget := func() {}
	defer func() { forget() }()
	publish := func() (*Reply, error) {
		// Publishing is bounded by the call's timeout too, not only by ctx.
		pctx := callCtx
		msg.SetContext(pctx)
		var err error
		if unconfirmed {
			lost, forget, err = up.PublishUnconfirmed(queue, msg, cl.unroutable)
			if err != nil {
				forget = func() {}
			}
		} else {
			err = c.cfg.Publisher.Publish(queue, msg)
		}
		switch {
		case err == nil:
			return nil, nil
		case errors.Is(err, ErrUnroutable):
			return fail(OutcomeUnroutable, ErrUnroutable)
		case ctx.Err() != nil:
			return ctxDone()
		case pctx.Err() != nil:
			return timedOut()
		}
		return fail(OutcomeError, fmt.Errorf("publish: %w", err))
	}
	if _, err := publish(); err != nil {
		return nil, err
	}

	var next int64                        // the stream sequence to deliver next
	var parked map[int64]*message.Message // stream messages that came early
	replied := false                      // a reply message arrived
	for {
		select {
		case <-ctx.Done():
			return ctxDone()
		case <-c.closed:
			return fail(OutcomeCanceled, ErrClosed)
		case <-expired:
			return callExpired()
		case <-timerC:
			return timedOut()
		case <-lost:
			// The channel the request was written on closed. Unless a reply shows it
			// arrived, publish it again (the server may then run it twice).
			lost = nil
			if replied || cl.queued() {
				continue
			}
			forget()
			forget = func() {}
			if _, err := publish(); err != nil {
				return nil, err
			}
			continue
		case <-cl.notify:
		}
		if cl.returned() {
			return fail(OutcomeUnroutable, ErrUnroutable)
		}
		for _, m := range cl.take() {
			replied = true
			mms, err := wire.MMSFromMetadata(m.Metadata)
			if err != nil {
				return fail(OutcomeError, fmt.Errorf("%w: %w", ErrProtocol, err))
			}
			if mms.IsError {
				re, err := wire.ParseErrorBody(m.Payload)
				if err != nil {
					return fail(OutcomeError, fmt.Errorf("%w: %w", ErrProtocol, err))
				}
				return fail(OutcomeError, re)
			}
			if mms.IsStream == nil || !*mms.IsStream {
				return newReply(m, mms, false), nil
			}
			// A stream message: deliver in sequence order, re-arm the timeout.
			seq := next
			if mms.Sequence != nil {
				seq = *mms.Sequence
			}
			if seq < next {
				c.m.dropped.Inc() // a duplicate
				continue
			}
			if parked == nil {
				parked = map[int64]*message.Message{}
			}
			parked[seq] = m
			if timer == nil {
				timer = time.NewTimer(timeout)
				timerC, expired = timer.C, nil // the call's deadline no longer holds
			} else {
				timer.Reset(timeout)
			}
			for {
				pm, ok := parked[next]
				if !ok {
					break
				}
				delete(parked, next)
				pmms := mms
				if pm != m {
					pmms, _ = wire.MMSFromMetadata(pm.Metadata) // parsed once already
				}
				r := newReply(pm, pmms, true)
				if r.End {
					return r, nil
				}
				if o.onChunk != nil {
					if err := o.onChunk(r); err != nil {
						if errors.Is(err, errStopped) {
							outcome = OutcomeCanceled
							return nil, err
						}
						return fail(OutcomeError, err)
					}
				}
				next++
			}
		}
	}
}

func newReply(m *message.Message, mms wire.MMS, stream bool) *Reply {
	r := &Reply{
		Body:      json.RawMessage(m.Payload),
		IDRequest: m.Metadata.Get(wire.HeaderIDRequest),
		Stream:    stream,
		End:       mms.IsEnd || !stream,
		Metadata:  m.Metadata,
	}
	if mms.Sequence != nil {
		r.Sequence = *mms.Sequence
	}
	return r
}

// reservedKey reports metadata keys that belong to the wire (mm.*, mms.*) or that the
// client sets itself (idRequest).
func reservedKey(k string) bool {
	return k == wire.HeaderIDRequest || len(k) >= 3 && k[:3] == "mm." || len(k) >= 4 && k[:4] == "mms."
}
