package router

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/patterns/election"
	"github.com/micromessaging/micromessaging/patterns/rpc"
)

var (
	// ErrNotConnected: Request was called before Connect or Run.
	ErrNotConnected = errors.New("micromessaging: service not connected: call Connect or Run first")
	// ErrClosed: the Service was closed.
	ErrClosed = errors.New("micromessaging: service closed")
	// ErrDuplicateRoute: Handle was called twice for one route.
	ErrDuplicateRoute = errors.New("micromessaging: route already handled")
	// ErrInvalidName is rpc.ErrInvalidName: a service or route name is empty or
	// contains white space.
	ErrInvalidName = rpc.ErrInvalidName
)

// Config configures a Service. The zero value connects to $RABBIT_URI (else
// amqp://guest:guest@127.0.0.1:5672/) and runs a Watermill router of its own.
type Config struct {
	// URL of the broker. "" means $RABBIT_URI, then amqp://guest:guest@127.0.0.1:5672/.
	URL string
	// Logger for the service and everything it runs. nil means watermill.NopLogger
	// (slog users: watermill.NewSlogLogger).
	Logger watermill.LoggerAdapter
	// Registerer for the metrics of the service, its connections and patterns. nil means
	// no metrics are registered.
	Registerer prometheus.Registerer
	// Router is a Watermill router you own and run. nil means the Service creates,
	// runs and closes one (and consumes its RPC routes without it, see Service.Router).
	// With your own router, the Service adds all its handlers to it, RPC routes
	// included (calling RunHandlers when it already runs), you call its Run and Close,
	// and Service.Close stops only the Service's handlers.
	Router *message.Router
	// Timeout of a request whose ctx has no deadline and that has no rpc.WithTimeout.
	// 0 means rpc.DefaultTimeout (120 s).
	Timeout time.Duration
	// Prefetch is the consumer prefetch of each route's request queue. 0 means the
	// transport's default (100).
	Prefetch int
	// Tasks sets the retries of HandleTask routes (MaxAttempts, backoff, MaxDuration;
	// zero values mean the tasks package defaults). Its Service, Publisher, Channels,
	// Logger and Registerer are ignored: the Service fills them in.
	Tasks TaskConfig
	// CloseTimeout bounds how long Close waits for the Service's handlers in flight
	// (RPC and task requests, events). 0 means 30 s.
	CloseTimeout time.Duration

	// Heartbeat is the peer-status heartbeat period. 0 means 10 s (Node's).
	Heartbeat time.Duration
	// LeaderRetry is how often a follower tries the election lock. 0 means 500 ms.
	LeaderRetry time.Duration
	// OnStepUp and OnStepDown are the election hooks (see election.Config).
	OnStepUp   func(election.StepUp)
	OnStepDown func(election.StepDown)
	// Load, if set, is published in every heartbeat (the "load" field of peerstatus).
	// nil means the QoS limiter's state (a QoSLoad), or nothing with DisableQoS.
	Load func() any

	// QoS configures the Service's QoS limiter (package middleware/qos), on by
	// default: the zero value is qos's adaptive defaults. It wraps the RPC, task and
	// event handlers of the Service. Its Prefetch, Registerer and Logger are ignored
	// (the Service uses Config.Prefetch, Registerer and Logger); Routes is keyed by
	// route name (as given to Handle or HandleTask). See the package documentation.
	QoS qos.Config
	// DisableQoS turns the QoS limiter off: handlers run as their deliveries arrive,
	// bounded only by Prefetch per route, and heartbeats carry no load.
	DisableQoS bool
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
}

// Validate reports every problem of the config at once.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout < 0 {
		errs = append(errs, errors.New("router: Config.Timeout is negative"))
	}
	if c.Prefetch < 0 {
		errs = append(errs, errors.New("router: Config.Prefetch is negative"))
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, errors.New("router: Config.CloseTimeout is negative"))
	}
	if !c.DisableQoS {
		if err := c.QoS.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("router: Config.QoS: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Service is one instance of a micromessaging service: it answers its routes, calls
// other services, and owns the connections, the Watermill router (unless you gave
// yours) and the metrics. Safe for concurrent use.
type Service struct {
	name   string
	id     string
	cfg    Config
	logger watermill.LoggerAdapter

	t      *transport
	wm     *message.Router
	et     *eventsTasks
	owned  bool // the Service runs and closes wm
	server *rpc.Server
	client *rpc.Client
	peers  *peers
	qos    *qos.Limiter // nil with Config.DisableQoS
	// qosDone is closed when the limiter's Run returned (set by wire under mu; nil
	// before).
	qosDone chan struct{}

	connectMu sync.Mutex    // serializes Connect
	connected chan struct{} // closed when Connect succeeded
	closed    chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error

	routerDone chan struct{} // owned router: closed when its Run returned

	mu         sync.Mutex
	started    bool // Connect was called
	wired      bool // connected, routes on wm, owned router started: later handlers go straight to wm
	isUp       bool // Connect succeeded
	routes     map[string]rpc.Handler
	direct     map[string]bool    // owned router: RPC routes consumed (or being) by requestSub.Handle
	handlers   []*message.Handler // the Service's handlers on wm
	replyReady atomic.Bool        // the reply handler is on wm (set under mu)
	runCtx     context.Context    // lives from Connect to Close: the handlers' subscriptions
	cancelRun  context.CancelFunc
	routerErr  error // owned router: what its Run returned
}

// New returns a Service named service with a new instance id (UUID v4). It checks the
// name and the config, and does no I/O: call Run or Connect.
func New(service string, cfg Config) (*Service, error) {
	cfg.setDefaults()
	if err := errors.Join(rpc.ValidateName("service", service), cfg.Validate()); err != nil {
		return nil, err
	}
	s := &Service{
		name:       service,
		id:         uuid.NewString(),
		cfg:        cfg,
		connected:  make(chan struct{}),
		closed:     make(chan struct{}),
		routerDone: make(chan struct{}),
		routes:     map[string]rpc.Handler{},
		direct:     map[string]bool{},
	}
	s.logger = cfg.Logger.With(watermill.LogFields{"service": service, "instance_id": s.id})
	var err error
	if s.t, err = newTransport(service, cfg); err != nil {
		return nil, err
	}
	if s.wm = cfg.Router; s.wm == nil {
		s.owned = true
		if s.wm, err = message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, cfg.Logger); err != nil {
			return nil, err
		}
	}
	if s.et, err = newEventsTasks(s, cfg); err != nil {
		return nil, err
	}
	if s.server, err = rpc.NewServer(rpc.ServerConfig{
		Service: service, Publisher: s.t.replies, Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if s.client, err = rpc.NewClient(rpc.ClientConfig{
		Service: service, InstanceID: s.id, Publisher: s.t.requests, Timeout: cfg.Timeout,
		Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if s.qos, err = newLimiter(service, cfg); err != nil {
		return nil, err
	}
	if s.qos != nil {
		defer func() {
			if err != nil { // take the limiter out of the metrics
				s.qos.Close()
			}
		}()
		s.qos.Attach(s.t.requestSub, "") // RPC and task routes share it
		if cfg.Load == nil {
			cfg.Load = s.qosLoad
		}
	}
	ready := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.isUp }
	if s.peers, err = newPeers(service, s.id, cfg, s.t, ready); err != nil {
		return nil, err
	}
	return s, nil
}

// Name returns the service name.
func (s *Service) Name() string { return s.name }

// ID returns the instance id (a UUID v4, new for every Service).
func (s *Service) ID() string { return s.id }

// Router returns the Watermill router the Service's handlers run on (yours, or the
// one it owns). Add your own handlers or middleware to it before Run. With the
// Service's own router, RPC routes (Handle) do not run on it: the transport's workers
// consume them directly (rabbitmq.Subscriber.Handle), which spares each request two
// goroutine hand-offs and a goroutine start; router middleware does not apply to them.
// Pass Config.Router to run them on a router of yours, with its middleware.
func (s *Service) Router() *message.Router { return s.wm }

// Handle answers route with h. It may be called before or after Connect/Run; after,
// it returns once the route is consumed (with the Service's own router, or yours when
// it runs). Errors: ErrInvalidName, ErrDuplicateRoute, ErrClosed, or the broker's.
func (s *Service) Handle(route string, h rpc.Handler) error {
	if err := rpc.ValidateName("route", route); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("router: Handle %q: nil handler", route)
	}
	s.mu.Lock()
	if s.isClosed() {
		s.mu.Unlock()
		return ErrClosed
	}
	if _, dup := s.routes[route]; dup || s.isTaskRoute(route) {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrDuplicateRoute, route)
	}
	s.routes[route] = h
	if !s.wired {
		s.mu.Unlock()
		return nil // Connect adds it
	}
	if s.owned {
		s.direct[route] = true
		s.mu.Unlock()
		if err := s.consumeRoute(s.runCtx, route, h); err != nil {
			s.mu.Lock()
			delete(s.routes, route)
			delete(s.direct, route)
			s.mu.Unlock()
			return err
		}
		return nil
	}
	err := s.addRouteLocked(route, h)
	if err != nil {
		delete(s.routes, route)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.startHandlers()
}

// addRouteLocked adds the route's handler to wm.
func (s *Service) addRouteLocked(route string, h rpc.Handler) error {
	wh, err := s.addRPCHandler(route, h)
	if err != nil {
		return err
	}
	s.handlers = append(s.handlers, wh)
	return nil
}

// startHandlers starts handlers added to wm after it started running: at once for the
// Service's own router (once it runs), for yours only if it runs already (otherwise
// its Run starts them).
func (s *Service) startHandlers() error {
	if s.owned {
		select {
		case <-s.wm.Running():
		case <-s.routerDone:
			return ErrClosed
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	if !s.wm.IsRunning() {
		return nil
	}
	return s.wm.RunHandlers(s.runCtx)
}

// Connect dials the broker (two connections: publish and consume) and starts
// consuming the routes registered so far; with the Service's own router it returns
// once they are consumed. Calling it again is a no-op; after a failure it may be
// retried. Run calls it.
func (s *Service) Connect(ctx context.Context) error {
	s.connectMu.Lock()
	defer s.connectMu.Unlock()
	s.mu.Lock()
	up, closed := s.isUp, s.isClosed()
	s.started = true
	s.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case up:
		return nil
	}
	if err := s.t.connect(ctx); err != nil {
		return err
	}
	if err := s.wire(ctx); err != nil {
		return err
	}
	if s.owned {
		select {
		case <-s.wm.Running():
		case <-s.routerDone:
			s.mu.Lock()
			err := s.routerErr
			s.mu.Unlock()
			return fmt.Errorf("router: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	} else if err := s.startHandlers(); err != nil {
		return err
	}
	s.mu.Lock()
	s.isUp = true
	s.mu.Unlock()
	s.peers.start()
	close(s.connected)
	s.mu.Lock()
	routes := len(s.routes)
	s.mu.Unlock()
	s.logger.Info("Service connected", watermill.LogFields{"routes": routes})
	return nil
}

// wire adds the routes registered so far to your router, or consumes them directly
// with the Service's own router (which it starts), once; a retry after a failure
// consumes the routes that failed.
func (s *Service) wire(ctx context.Context) error {
	if err := s.wireOnce(); err != nil {
		return err
	}
	if !s.owned {
		return nil
	}
	s.mu.Lock()
	var todo []string
	for route := range s.routes {
		if !s.direct[route] {
			s.direct[route] = true // nobody else starts it meanwhile
			todo = append(todo, route)
		}
	}
	handlers := make([]rpc.Handler, len(todo))
	for i, route := range todo {
		handlers[i] = s.routes[route]
	}
	s.mu.Unlock()
	for i, route := range todo {
		if err := s.consumeRoute(ctx, route, handlers[i]); err != nil {
			s.mu.Lock()
			for _, r := range todo[i:] { // this one and those not tried
				delete(s.direct, r)
			}
			s.mu.Unlock()
			return err
		}
	}
	return nil
}

// wireOnce creates runCtx, adds the routes to your router, and starts the limiter and
// the Service's own router, the first time it is called.
func (s *Service) wireOnce() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed() { // Close ran during the dial: start nothing it would not stop
		return ErrClosed
	}
	if s.wired {
		return nil
	}
	s.runCtx, s.cancelRun = context.WithCancel(context.Background())
	if !s.owned {
		for route, h := range s.routes {
			if err := s.addRouteLocked(route, h); err != nil {
				return err
			}
		}
	}
	s.wired = true
	s.startQoS()
	if s.owned {
		go func() {
			defer close(s.routerDone)
			err := s.wm.Run(s.runCtx)
			s.mu.Lock()
			s.routerErr = err
			s.mu.Unlock()
		}()
	}
	return nil
}

// Run connects (see Connect) and serves until ctx is done or Close is called, then
// closes the Service. It returns nil after an orderly stop, or the error that stopped
// it. Calling Run again, even concurrently, connects nothing twice: every Run returns
// when the Service closes.
func (s *Service) Run(ctx context.Context) error {
	if err := s.Connect(ctx); err != nil {
		return err
	}
	var routerDone chan struct{} // nil: never ready
	if s.owned {
		routerDone = s.routerDone
	}
	select {
	case <-ctx.Done():
	case <-s.closed:
	case <-routerDone:
		s.mu.Lock()
		err := s.routerErr
		s.mu.Unlock()
		if !s.isClosed() {
			return errors.Join(fmt.Errorf("router: stopped unexpectedly: %w", err), s.Close())
		}
	}
	return s.Close()
}

// Request calls route of service target with body and waits for the reply; see
// rpc.Client.Request for the options and the errors. It waits (bounded by ctx) while
// Connect is in progress, and fails with ErrNotConnected before Connect or Run.
func (s *Service) Request(ctx context.Context, target, route string, body any, opts ...rpc.CallOption) (*rpc.Reply, error) {
	if err := s.ensureReplies(ctx); err != nil {
		return nil, err
	}
	return s.client.Request(ctx, target, route, body, opts...)
}

// Stream calls route of service target and yields the reply messages in order; see
// rpc.Client.Stream.
func (s *Service) Stream(ctx context.Context, target, route string, body any, opts ...rpc.CallOption) iter.Seq2[*rpc.Reply, error] {
	return func(yield func(*rpc.Reply, error) bool) {
		if err := s.ensureReplies(ctx); err != nil {
			yield(nil, err)
			return
		}
		s.client.Stream(ctx, target, route, body, opts...)(yield)
	}
}

// ensureReplies adds the reply handler on the first request (the reply queue is
// declared lazily, as Node does).
func (s *Service) ensureReplies(ctx context.Context) error {
	if s.replyReady.Load() {
		return nil
	}
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return ErrNotConnected
	}
	select {
	case <-s.connected:
	case <-s.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	if s.isClosed() {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.replyReady.Load() {
		s.mu.Unlock()
		return nil
	}
	h, err := s.client.AddHandler(s.wm, s.t.replySub)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.handlers = append(s.handlers, h)
	s.replyReady.Store(true)
	s.mu.Unlock()
	return s.startHandlers()
}

func (s *Service) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// Close stops the Service: calls in progress fail with rpc.ErrClosed, handlers in
// flight finish (bounded by Config.CloseTimeout), then subscribers, publishers and both
// connections close. With your own router, only the Service's handlers are stopped
// (Watermill closes a router whose handlers all stopped). Idempotent.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		close(s.closed)
		handlers := s.handlers
		cancel := s.cancelRun
		wired := s.wired
		qosDone := s.qosDone
		s.mu.Unlock()

		var errs []error
		errs = append(errs, s.peers.close()) // hands leadership over while the connections are up
		errs = append(errs, s.client.Close())
		// Before the handlers stop: messages waiting for a slot (all of them while
		// intake is stopped) are nacked instead of holding the router's close.
		errs = append(errs, s.closeQoS(qosDone))
		// Then every subscription of the Service's handlers ends at once, by ending
		// runCtx (RPC routes, and the router's handlers, whose Run or RunHandlers got
		// it): their in-flight handlers drain side by side, and none is left waiting
		// for a connection that is down. The owned router's Close is started first, so
		// that it is the call that waits for its handlers and returns a close timeout
		// (Watermill also closes a router whose handlers all stopped, but only logs
		// the error); it may block until runCtx ends.
		var routerClosed chan error
		if s.owned && wired {
			routerClosed = make(chan error, 1)
			closing := make(chan struct{})
			go func() {
				close(closing)
				routerClosed <- s.wm.Close()
			}()
			<-closing
		}
		if cancel != nil {
			cancel()
		}
		if s.owned {
			if wired {
				errs = append(errs, <-routerClosed)
				<-s.routerDone
			}
		} else {
			for _, h := range handlers {
				select {
				case <-h.Started():
					h.Stop()
					select {
					case <-h.Stopped():
					case <-time.After(s.cfg.CloseTimeout):
						errs = append(errs, errors.New("router: a handler did not stop in time"))
					}
				default:
				}
			}
		}
		errs = append(errs, s.et.close())
		errs = append(errs, s.t.close())
		s.closeErr = errors.Join(errs...)
		s.logger.Info("Service closed", nil)
	})
	return s.closeErr
}
