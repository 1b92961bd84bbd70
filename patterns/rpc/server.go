package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/wire"
)

// Handler answers the requests of one route. ctx ends at the request's deadline (the
// caller's timeout, carried in __mms.eat) or when the message's context ends. The value
// it returns is the reply body (see EncodeBody); an error becomes an error reply (see
// RemoteError). A handler that calls req.Write streams: each Write sends a chunk and the
// returned value is the stream's end message.
type Handler func(ctx context.Context, req *Request) (any, error)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Service is the name of the service whose routes the server answers: route R is
	// consumed from q.requests.<Service>.<R>. Required.
	Service string
	// Publisher sends the replies: to the default exchange, routing key = the request's
	// reply queue (Publish topic = mm.reply_to), not mandatory. Required. Publisher
	// confirms are not needed (a lost reply looks like a timeout to the caller).
	Publisher message.Publisher
	// ReplyTimeout bounds how long sending one reply may wait (for example for the
	// connection to come back). 0 means 30 s.
	ReplyTimeout time.Duration
	// Logger; nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer for the server's metrics; nil means they are not registered.
	Registerer prometheus.Registerer
}

func (c *ServerConfig) setDefaults() {
	if c.ReplyTimeout == 0 {
		c.ReplyTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of the config at once.
func (c ServerConfig) Validate() error {
	var errs []error
	if err := ValidateName("service", c.Service); err != nil {
		errs = append(errs, err)
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("rpc: ServerConfig.Publisher is required"))
	}
	if c.ReplyTimeout < 0 {
		errs = append(errs, errors.New("rpc: ServerConfig.ReplyTimeout is negative"))
	}
	return errors.Join(errs...)
}

// Server answers requests to the routes of one service. Each route is a Watermill
// handler (HandlerFunc) consuming the route's request queue; AddHandler adds one to a
// *message.Router. A Server is safe for concurrent use and holds no goroutine.
type Server struct {
	cfg    ServerConfig
	logger watermill.LoggerAdapter
	m      *serverMetrics
}

// NewServer returns a Server. It does no I/O.
func NewServer(cfg ServerConfig) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newServerMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("rpc: server metrics: %w", err)
	}
	return &Server{
		cfg:    cfg,
		logger: cfg.Logger.With(watermill.LogFields{"component": "rpc_server", "service": cfg.Service}),
		m:      m,
	}, nil
}

// Service returns the name of the service the server answers for.
func (s *Server) Service() string { return s.cfg.Service }

// Queue returns the request queue of route, q.requests.<service>.<route>: the topic
// to subscribe the route's handler to. The queue must be declared durable, not
// exclusive, not auto-delete, with arguments wire.RequestQueueArgs() (as every
// micromessaging peer declares it).
func (s *Server) Queue(route string) string { return wire.RequestQueue(s.cfg.Service, route) }

// AddHandler validates route and adds h to r as a consumer handler named and
// subscribed like the route's request queue (see Queue), consuming from sub with
// acknowledgements. sub must declare that queue as Queue says (see the package
// example). If r is already running, call r.RunHandlers afterwards. The returned
// handler's Started channel is closed once the route is consumed.
func (s *Server) AddHandler(r *message.Router, sub message.Subscriber, route string, h Handler) (*message.Handler, error) {
	q, err := requestQueue(s.cfg.Service, route)
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("rpc: nil handler for route " + route)
	}
	if _, dup := r.Handlers()[q]; dup {
		return nil, fmt.Errorf("rpc: route %q of %q is already handled by this router", route, s.cfg.Service)
	}
	return r.AddConsumerHandler(q, q, sub, s.HandlerFunc(route, h)), nil
}

// HandlerFunc returns the Watermill handler of route: it runs h for each request and
// sends the reply. It always returns nil, so the request is acknowledged whatever
// happens: handler errors and panics become error replies, expired requests are
// dropped, and a reply that cannot be sent is logged (the caller times out).
func (s *Server) HandlerFunc(route string, h Handler) message.NoPublishHandlerFunc {
	outcomes := map[string]prometheus.Counter{}
	for _, o := range []string{OutcomeOK, OutcomeError, OutcomeExpired} {
		outcomes[o] = s.m.requests.WithLabelValues(route, o)
	}
	latency := s.m.latency.WithLabelValues(route)
	logger := s.logger.With(watermill.LogFields{"route": route})
	return func(msg *message.Message) error {
		start := time.Now()
		outcome := s.serve(route, h, msg, logger, start)
		outcomes[outcome].Inc()
		if outcome != OutcomeExpired {
			latency.Observe(time.Since(start).Seconds())
		}
		return nil
	}
}

// serve handles one request received at now and returns its outcome.
func (s *Server) serve(route string, h Handler, msg *message.Message, logger watermill.LoggerAdapter, now time.Time) string {
	md := msg.Metadata
	req := &Request{
		Route:     route,
		IDRequest: md.Get(wire.HeaderIDRequest),
		Body:      json.RawMessage(msg.Payload),
		Metadata:  md,
		Message:   msg,
		srv:       s,
		replyTo:   md.Get(wire.MetaReplyTo),
		corrID:    md.Get(wire.MetaCorrelationID),
	}
	mms, err := wire.MMSFromMetadata(md)
	if err != nil {
		logger.Error("Malformed request: __mms", err, watermill.LogFields{"message_uuid": msg.UUID})
		req.finish(nil, &RemoteError{Message: "malformed request: " + err.Error(), CodeString: "badRequest", Code: 400})
		return OutcomeError
	}
	req.IsTask = mms.IsTask
	if mms.EAT > 0 {
		req.Deadline = time.UnixMilli(mms.EAT)
		if !now.Before(req.Deadline) {
			logger.Debug("Request expired before it ran: dropped", watermill.LogFields{
				"message_uuid": msg.UUID, "expired_ms_ago": now.Sub(req.Deadline).Milliseconds()})
			return OutcomeExpired
		}
	}
	ctx := msg.Context()
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	req.ctx = ctx

	s.m.inFlight.Inc()
	value, herr := s.run(ctx, h, req, logger)
	s.m.inFlight.Dec()
	return req.finish(value, herr)
}

// run calls h, turning a panic into an error.
func (s *Server) run(ctx context.Context, h Handler, req *Request, logger watermill.LoggerAdapter) (value any, err error) {
	defer func() {
		if p := recover(); p != nil {
			logger.Error("Handler panicked", fmt.Errorf("%v", p), watermill.LogFields{
				"message_uuid": req.Message.UUID, "stack": string(debug.Stack())})
			value = nil
			err = &RemoteError{Message: fmt.Sprintf("panic: %v", p), CodeString: "panic", Code: 500}
		}
	}()
	return h(ctx, req)
}

// Request is one request as the handler sees it.
type Request struct {
	// Route is the route the request came in on.
	Route string
	// IDRequest is the request id (header idRequest), copied to every reply.
	IDRequest string
	// Body is the JSON body (already gunzipped). Use Decode to unmarshal it.
	Body json.RawMessage
	// Metadata holds every header (user headers under their names) and the wire
	// properties (mm.* and mms.* keys, see package wire). Read it only.
	Metadata message.Metadata
	// Deadline is when the caller gives up (__mms.eat); zero when it sent none.
	Deadline time.Time
	// IsTask is true for a task (__mms.isTask): nothing is sent back.
	IsTask bool
	// Message is the underlying Watermill message.
	Message *message.Message

	srv     *Server
	ctx     context.Context
	replyTo string
	corrID  string

	mu       sync.Mutex
	sequence int64 // of the next reply message
	streamed bool  // a chunk went out
	answered bool  // the final reply went out (or was given up)
}

// Decode unmarshals the JSON body into v.
func (r *Request) Decode(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return &RemoteError{Message: "cannot decode request body: " + err.Error(), CodeString: "badRequest", Code: 400}
	}
	return nil
}

// Header returns the user header key ("" when absent).
func (r *Request) Header(key string) string { return r.Metadata.Get(key) }

// Write sends v as the next chunk of a streamed reply (__mms isStream true, isEnd
// false) and waits until it is handed to the publisher. The value the handler returns
// afterwards becomes the stream's end message. Write returns ErrExpired if the
// request's deadline passed before the first chunk (nothing is sent; once a chunk went
// out in time the stream runs to its end, as with Node, because the caller re-arms its
// timeout on every chunk), ErrAnswered after the final reply, and nil without sending
// anything for a task or a request without reply queue. Safe for concurrent use; chunks
// are numbered in the order Write is called.
func (r *Request) Write(v any) error {
	payload, err := EncodeBody(v)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.replyTo == "":
		return nil
	case r.answered:
		return ErrAnswered
	case !r.streamed && r.expired():
		return ErrExpired
	}
	if err := r.publish(payload, false, false, true); err != nil {
		return err
	}
	r.streamed = true
	return nil
}

func (r *Request) expired() bool {
	return !r.Deadline.IsZero() && !time.Now().Before(r.Deadline)
}

// finish sends the final reply for (value, herr) and returns the outcome.
func (r *Request) finish(value any, herr error) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	outcome := OutcomeOK
	if herr != nil {
		outcome = OutcomeError
	}
	if r.answered || r.replyTo == "" {
		return outcome
	}
	r.answered = true
	if !r.streamed && r.expired() {
		r.srv.logger.Debug("Reply after the request's deadline: not sent", watermill.LogFields{
			"route": r.Route, "message_uuid": r.Message.UUID})
		return OutcomeExpired
	}
	var payload []byte
	if herr == nil {
		var err error
		if payload, err = EncodeBody(value); err != nil {
			herr = &RemoteError{Message: "cannot encode reply: " + err.Error(), CodeString: "badReply", Code: 500}
			outcome = OutcomeError
		}
	}
	if herr != nil {
		payload = wire.ErrorBody(errorForWire(herr))
	}
	if err := r.publish(payload, herr != nil, true, r.streamed && herr == nil); err != nil {
		r.srv.logger.Error("Cannot send reply", err, watermill.LogFields{
			"route": r.Route, "message_uuid": r.Message.UUID, "reply_to": r.replyTo})
	}
	return outcome
}

// errorForWire gives local sentinels the codeString Node uses for them.
func errorForWire(err error) error {
	var re *RemoteError
	switch {
	case errors.As(err, &re):
		return err
	case errors.Is(err, ErrTimeout):
		return &RemoteError{Message: err.Error(), CodeString: "timeout", Code: 500}
	case errors.Is(err, ErrUnroutable):
		return &RemoteError{Message: err.Error(), CodeString: "unroutable", Code: 500}
	}
	return err
}

// publish sends one reply message; r.mu is held.
func (r *Request) publish(payload []byte, isError, isEnd, isStream bool) error {
	seq := r.sequence
	r.sequence++
	msg := message.NewMessage(newID(), payload)
	md := msg.Metadata
	md[wire.MetaCorrelationID] = r.corrID
	if r.IDRequest != "" {
		md[wire.HeaderIDRequest] = r.IDRequest
	}
	md[wire.MetaMMSIsError] = strconv.FormatBool(isError)
	md[wire.MetaMMSIsEnd] = strconv.FormatBool(isEnd)
	if isStream {
		md[wire.MetaMMSIsStream] = "true"
	}
	md[wire.MetaMMSSequence] = strconv.FormatInt(seq, 10)
	// Sending waits for the connection during an outage: bounded by the request's
	// deadline while it holds (the handler's ctx is alive until the final reply is sent),
	// else by ReplyTimeout (stream chunks may outlive the deadline).
	if r.ctx != nil && !r.Deadline.IsZero() && time.Now().Before(r.Deadline) {
		msg.SetContext(r.ctx)
	} else {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Message.Context()), r.srv.cfg.ReplyTimeout)
		defer cancel()
		msg.SetContext(ctx)
	}
	return r.srv.cfg.Publisher.Publish(r.replyTo, msg)
}

// EncodeBody returns the JSON body for v as requests and replies send it:
// json.RawMessage and []byte are sent as they are (they must hold JSON); anything else
// is encoded like JavaScript's JSON.stringify (wire.JSON; nil becomes `""`).
func EncodeBody(v any) ([]byte, error) {
	switch b := v.(type) {
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
	}
	return wire.JSON(v)
}
