package router

// The Service's QoS limiter (package middleware/qos): one per Service, on by default.
// It wraps the RPC request handlers, the task handlers and the event listeners (never
// the RPC reply consumer: a handler waiting for a reply queued behind itself would
// never finish), pushes back on the request subscriber (prefetch, pause), and its
// state is the "load" of the instance's heartbeats.

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// defaultPrefetch is the rabbitmq subscriber's default prefetch (Config.Prefetch 0).
const defaultPrefetch = 100

// QoSLoad is what a Service with QoS publishes as the "load" of its heartbeats (unless
// Config.Load replaces it): the state of its limiter. Peers read it from
// peerstatus.Peer.Load:
//
//	var l router.QoSLoad
//	err := json.Unmarshal(peer.Load, &l)
type QoSLoad struct {
	// State is "normal", "pressure" or "stopped" (qos.State.String).
	State string `json:"state"`
	// Limit is the global limit of messages handled at once (0 while stopped).
	Limit int `json:"limit"`
	// InFlight and InFlightBytes are the messages (and their payload bytes) being
	// handled now.
	InFlight      int   `json:"inFlight"`
	InFlightBytes int64 `json:"inFlightBytes"`
}

// newLimiter builds the Service's limiter from cfg (nil when cfg.DisableQoS).
func newLimiter(service string, cfg Config) (*qos.Limiter, error) {
	if cfg.DisableQoS {
		return nil, nil
	}
	qc := cfg.QoS
	qc.Prefetch = cfg.Prefetch
	if qc.Prefetch == 0 {
		qc.Prefetch = defaultPrefetch
	}
	qc.Registerer, qc.Logger = cfg.Registerer, cfg.Logger
	if len(cfg.QoS.Routes) > 0 {
		// Keys are route names; the limiter knows handlers by their Watermill names.
		qc.Routes = make(map[string]qos.RouteLimit, 3*len(cfg.QoS.Routes))
		maps.Copy(qc.Routes, cfg.QoS.Routes)
		for route, rl := range cfg.QoS.Routes {
			qc.Routes[wire.RequestQueue(service, route)] = rl
			qc.Routes[taskHandlerName(route)] = rl
		}
	}
	l, err := qos.New(qc)
	if err != nil {
		return nil, fmt.Errorf("router: Config.QoS: %w", err)
	}
	return l, nil
}

// taskHandlerName is the Watermill handler name of task route.
func taskHandlerName(route string) string { return "tasks." + route }

// limit wraps h with the limiter's middleware (h itself without QoS). name is the
// handler's name for route limits when it runs without a router ("": a router
// handler, whose name is in the message's context).
func (s *Service) limit(h message.NoPublishHandlerFunc, name string) message.NoPublishHandlerFunc {
	if s.qos == nil {
		return h
	}
	mw := s.qos.Middleware
	if name != "" {
		mw = s.qos.HandlerMiddleware(name)
	}
	wrapped := mw(func(msg *message.Message) ([]*message.Message, error) {
		return nil, h(msg)
	})
	return func(msg *message.Message) error {
		_, err := wrapped(msg)
		return err
	}
}

// qosLoad is the default Config.Load of a Service with QoS.
func (s *Service) qosLoad() any {
	n, b := s.qos.InFlight()
	return QoSLoad{State: s.qos.State().String(), Limit: s.qos.Limit(), InFlight: n, InFlightBytes: b}
}

// startQoS runs the limiter's sampling loop until Close (called once, by wire, under mu).
func (s *Service) startQoS() {
	if s.qos == nil {
		return
	}
	s.qosDone = make(chan struct{})
	go func() {
		defer close(s.qosDone)
		if err := s.qos.Run(context.Background()); err != nil && err != qos.ErrClosed {
			s.logger.Error("QoS limiter stopped", err, nil)
		}
	}()
}

// closeQoS fails the messages waiting for a slot (they are nacked: requeued), stops the
// sampling loop (which resumes the request subscriber and restores its prefetch) and
// waits for it.
func (s *Service) closeQoS(done chan struct{}) error {
	if s.qos == nil {
		return nil
	}
	err := s.qos.Close()
	if done != nil {
		<-done
	}
	return err
}

// QoS returns the Service's limiter (nil with Config.DisableQoS): read its state
// (State, Limit, InFlight, LastSignals), or wrap handlers of your own with its
// Middleware. Its hooks are set through Config.QoS.OnPressure and OnRelease.
func (s *Service) QoS() *qos.Limiter { return s.qos }

// addRPCHandler adds the handler of an RPC route to wm (rpc.Server.AddHandler with the
// limiter inside).
func (s *Service) addRPCHandler(route string, h rpc.Handler) (*message.Handler, error) {
	q, err := s.requestQueue(route)
	if err != nil {
		return nil, err
	}
	if _, dup := s.wm.Handlers()[q]; dup {
		return nil, fmt.Errorf("%w: %q (the router already has a handler %q)", ErrDuplicateRoute, route, q)
	}
	return s.wm.AddConsumerHandler(q, q, s.t.requestSub, s.limit(s.server.HandlerFunc(route, h), "")), nil
}

// consumeRoute consumes an RPC route without a router (the Service owns its router):
// the request subscriber's workers run the handler, with the limiter inside. It returns
// once the route is consumed, or when waitCtx ends first (the connection is down);
// the caller unmarks the route in s.direct on failure, so that a retried Connect (or
// Handle) consumes it again.
func (s *Service) consumeRoute(waitCtx context.Context, route string, h rpc.Handler) error {
	q, err := s.requestQueue(route)
	if err != nil {
		return err
	}
	// The subscription lives until Close (runCtx); waiting for it to start is bounded by
	// waitCtx too.
	subCtx, cancelSub := context.WithCancel(s.runCtx)
	stop := context.AfterFunc(waitCtx, cancelSub)
	_, err = s.t.requestSub.Handle(subCtx, q, s.limit(s.server.HandlerFunc(route, h), q))
	if !stop() && err == nil { // waitCtx ended as the route started: it is stopping
		err = waitCtx.Err()
	}
	if err != nil {
		cancelSub()
		switch {
		case errors.Is(err, rabbitmq.ErrClosed) || s.isClosed():
			return ErrClosed
		case waitCtx.Err() != nil:
			return fmt.Errorf("router: consume route %q: %w", route, waitCtx.Err())
		}
		return fmt.Errorf("router: consume route %q: %w", route, err)
	}
	return nil
}

// requestQueue returns the request queue of route.
func (s *Service) requestQueue(route string) (string, error) {
	q := wire.RequestQueue(s.name, route)
	if len(q) > 255 {
		return "", fmt.Errorf("%w: queue name %q is longer than 255 bytes", ErrInvalidName, q)
	}
	return q, nil
}
