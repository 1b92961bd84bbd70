package router

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// TaskConfig is the retry configuration of HandleTask routes (Config.Tasks); see
// tasks.WorkerConfig.
type TaskConfig = tasks.WorkerConfig

// eventsTasks wires patterns/events and patterns/tasks into the Service: events go out on
// the publish connection (x.pubSub, confirmed) and listen queues are consumed on the
// consume connection; tasks go out on the requests publisher (default exchange,
// mandatory, confirmed) and are handled from the request subscriber, like RPC routes.
type eventsTasks struct {
	eventPub  *rabbitmq.Publisher
	listenSub *rabbitmq.Subscriber
	bus       *events.Bus
	client    *tasks.Client
	worker    *tasks.Worker

	mu         sync.Mutex
	taskRoutes map[string]bool
}

var eventExchange = rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}

// newEventsTasks is called by New once s.t and s.wm exist.
func newEventsTasks(s *Service, cfg Config) (*eventsTasks, error) {
	et := &eventsTasks{taskRoutes: map[string]bool{}}
	var err error
	if et.eventPub, err = rabbitmq.NewPublisher(s.t.pubConn, rabbitmq.PublisherConfig{
		Exchange: wire.EventExchange, Declare: &eventExchange,
		Name: "events", Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if et.listenSub, err = rabbitmq.NewSubscriber(s.t.subConn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{eventExchange},
		Queue: func(topic string) rabbitmq.Queue {
			q, _ := et.bus.Queue(topic) // every topic of this subscriber is a listen queue of the Bus
			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete,
				Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
		},
		CloseTimeout: cfg.CloseTimeout, Name: "events", Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if et.bus, err = events.New(events.Config{
		Service: s.name, Publisher: et.eventPub, Subscriber: et.listenSub, Router: s.wm, Logger: cfg.Logger,
		// Listeners added while wm runs get the Service's run ctx, like its other handlers;
		// before Connect, Connect (or the owned router's Run) starts them.
		StartHandlers: func() error {
			s.mu.Lock()
			ctx := s.runCtx
			s.mu.Unlock()
			if ctx == nil {
				return nil
			}
			return s.wm.RunHandlers(ctx)
		},
	}); err != nil {
		return nil, err
	}
	if et.client, err = tasks.NewClient(tasks.ClientConfig{
		Publisher: s.t.requests, Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	wc := cfg.Tasks // retry settings; the wiring fields are the Service's
	wc.Service, wc.Publisher, wc.Channels, wc.Logger, wc.Registerer = s.name, s.t.requests, s.t.pubConn, cfg.Logger, cfg.Registerer
	if et.worker, err = tasks.NewWorker(wc); err != nil {
		return nil, err
	}
	return et, nil
}

// close is called by Service.Close after the handlers stopped, before s.t.close().
func (et *eventsTasks) close() error {
	return errors.Join(et.bus.Close(), et.worker.Close(), et.listenSub.Close(), et.eventPub.Close())
}

// waitConnected fails with ErrNotConnected before Connect/Run and waits (bounded by ctx)
// while Connect is in progress.
func (s *Service) waitConnected(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return ErrNotConnected
	}
	select {
	case <-s.connected:
		return nil
	case <-s.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Emit publishes body as event <target>.<route> on x.pubSub and returns once the broker
// confirmed it; see events.Bus.Emit. Every instance listening to a matching key gets a
// copy. Fails with ErrNotConnected before Connect or Run.
func (s *Service) Emit(ctx context.Context, target, route string, body any, headers map[string]string) error {
	if err := s.waitConnected(ctx); err != nil {
		return err
	}
	return s.et.bus.Emit(ctx, target, route, body, headers)
}

// Listen runs h for every event whose key matches <target>.<pattern> ("*" one word,
// "#" any), on a queue of this instance (events.Durable(name) for a durable queue
// shared by the service's instances); see events.Bus.Listen. It may be called before or
// after Connect. Listening twice to the same target and pattern fails with
// events.ErrDuplicateListen. The Listener stops and starts again.
func (s *Service) Listen(target, pattern string, h message.NoPublishHandlerFunc, opts ...events.ListenOption) (*events.Listener, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	return s.et.bus.Listen(target, pattern, s.limit(h, ""), opts...)
}

// Task sends body to one instance of service target for route and returns once the
// broker confirmed it, or fails at once with tasks.ErrUnroutable (= wire.ErrUnroutable)
// when nobody serves the route; see tasks.Client.Task. Fails with ErrNotConnected
// before Connect or Run.
func (s *Service) Task(ctx context.Context, target, route string, body any, headers map[string]string) error {
	if err := s.waitConnected(ctx); err != nil {
		return err
	}
	return s.et.client.Task(ctx, target, route, body, headers)
}

// HandleTask handles the tasks of route with h: acked when h returns nil; an error, a
// panic or a run past Config.Tasks.MaxDuration is retried with backoff through
// q.retry.<service>.<route>.<n> and dead-lettered to q.dead.<service>.<route> after
// the last attempt (tasks.Replay moves them back). A route is either an RPC route
// (Handle) or a task route. It may be called before or after Connect.
func (s *Service) HandleTask(route string, h message.NoPublishHandlerFunc) error {
	if err := rpc.ValidateName("route", route); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("router: HandleTask %q: nil handler", route)
	}
	s.mu.Lock()
	if s.isClosed() {
		s.mu.Unlock()
		return ErrClosed
	}
	s.et.mu.Lock()
	_, rpcDup := s.routes[route]
	dup := rpcDup || s.et.taskRoutes[route]
	if !dup {
		s.et.taskRoutes[route] = true
	}
	s.et.mu.Unlock()
	if dup {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrDuplicateRoute, route)
	}
	wh := s.wm.AddConsumerHandler(taskHandlerName(route), s.et.worker.Topic(route), s.t.requestSub, s.limit(s.et.worker.Handler(route, h), ""))
	s.handlers = append(s.handlers, wh)
	wired := s.wired
	s.mu.Unlock()
	if !wired {
		return nil // the router starts it when the Service connects
	}
	return s.startHandlers()
}

// isTaskRoute is for Handle: a route is either an RPC route or a task route.
func (s *Service) isTaskRoute(route string) bool {
	s.et.mu.Lock()
	defer s.et.mu.Unlock()
	return s.et.taskRoutes[route]
}
