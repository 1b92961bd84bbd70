package router

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// transport is the one place where the Service's connections, publishers and
// subscribers are built and closed. Patterns get them as Watermill interfaces.
//
// Two connections: one for publishing, one for consuming, so that a consumer's flow
// control (or a slow consumer) never throttles publishing and the reverse.
//
// To add a pattern (events, tasks, election, peer status): add its publisher or
// subscriber here (built in newTransport, closed in close), and the pattern's methods
// on Service in a file of their own.
type transport struct {
	pubConn *rabbitmq.Connection
	subConn *rabbitmq.Connection

	// requests publishes requests and tasks: default exchange, mandatory, so a route
	// nobody serves fails at once with wire.ErrUnroutable. Tasks wait for the broker's
	// confirm; RPC requests go out unconfirmed (PublishUnconfirmed: the caller waits for
	// the reply anyway, and a return still fails the call at once).
	requests *rabbitmq.Publisher
	// replies publishes RPC replies: default exchange, not mandatory, no confirms (a
	// lost reply looks like a timeout to the caller, a confirm would only add latency).
	replies *rabbitmq.Publisher

	// requestSub consumes q.requests.<service>.<route> (durable, x-expires 24 h) with acks.
	requestSub *rabbitmq.Subscriber
	// replySub consumes the instance's reply queue (exclusive) without acks.
	replySub *rabbitmq.Subscriber

	// events publishes on x.pubSub (heartbeats and peer.alive.req; events too), confirmed.
	events *rabbitmq.Publisher
	// internalSub gives every Subscribe an exclusive, auto-delete queue
	// q.pubSub.<service>.<uuid> bound to x.pubSub with the topic as key, consumed
	// without acks (heartbeats, status queries). The election lock lives on subConn.
	internalSub *rabbitmq.Subscriber
}

func newTransport(service string, cfg Config) (*transport, error) {
	t := &transport{}
	var err error
	conn := func(role string) *rabbitmq.Connection {
		if err != nil {
			return nil
		}
		var c *rabbitmq.Connection
		c, err = rabbitmq.NewConnection(rabbitmq.ConnectionConfig{
			URL:        cfg.URL,
			Name:       "micromessaging " + service + " " + role,
			Logger:     cfg.Logger,
			Registerer: cfg.Registerer,
		})
		return c
	}
	t.pubConn = conn("publish")
	t.subConn = conn("consume")
	if err != nil {
		return nil, err
	}
	if t.requests, err = rabbitmq.NewPublisher(t.pubConn, rabbitmq.PublisherConfig{
		Mandatory:  true,
		Name:       "requests",
		Logger:     cfg.Logger,
		Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if t.replies, err = rabbitmq.NewPublisher(t.pubConn, rabbitmq.PublisherConfig{
		NoConfirm:  true,
		Name:       "replies",
		Logger:     cfg.Logger,
		Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if t.requestSub, err = rabbitmq.NewSubscriber(t.subConn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
		Prefetch:     cfg.Prefetch,
		CloseTimeout: cfg.CloseTimeout,
		Name:         "requests",
		Logger:       cfg.Logger,
		Registerer:   cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if t.replySub, err = rabbitmq.NewSubscriber(t.subConn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Exclusive: true}
		},
		NoAck:        true,
		Exclusive:    true,
		CloseTimeout: cfg.CloseTimeout,
		Name:         "replies",
		Logger:       cfg.Logger,
		Registerer:   cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	x := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	if t.events, err = rabbitmq.NewPublisher(t.pubConn, rabbitmq.PublisherConfig{
		Exchange: wire.EventExchange, Declare: &x, Name: "events",
		Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	if t.internalSub, err = rabbitmq.NewSubscriber(t.subConn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{x},
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: wire.ListenQueue(service, uuid.NewString()), Exclusive: true, AutoDelete: true,
				Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
		},
		NoAck: true, CloseTimeout: cfg.CloseTimeout, Name: "internal", Logger: cfg.Logger, Registerer: cfg.Registerer,
	}); err != nil {
		return nil, err
	}
	return t, nil
}

// connect dials both connections (each a no-op when already connected).
func (t *transport) connect(ctx context.Context) error {
	if err := t.pubConn.Connect(ctx); err != nil {
		return fmt.Errorf("publish connection: %w", err)
	}
	if err := t.subConn.Connect(ctx); err != nil {
		return fmt.Errorf("consume connection: %w", err)
	}
	return nil
}

// close closes subscribers (draining in-flight handlers), publishers, then connections.
func (t *transport) close() error {
	return errors.Join(
		t.requestSub.Close(),
		t.replySub.Close(),
		t.internalSub.Close(),
		t.requests.Close(),
		t.replies.Close(),
		t.events.Close(),
		t.subConn.Close(),
		t.pubConn.Close(),
	)
}
