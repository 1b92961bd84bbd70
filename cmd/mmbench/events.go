package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// events: one emitter (one events.Bus on its own connection) and L listeners (-opt
// listeners=L, default 1), each a service instance of its own (connection, subscriber,
// Watermill router, Bus) listening to <target>.evt.* on its exclusive queue. C
// goroutines (-c) call Emit, which returns once the broker confirmed the event. The clock
// runs from the first Emit to the moment every listener has handled all N events.
// Events are transient, as Node sends them.
//
// raw-events: the same on plain amqp091-go: one channel in confirm mode shared by C
// goroutines, each publishing and waiting for its confirm (PublishWithDeferredConfirm),
// and L connections each consuming an exclusive queue bound to x.pubSub with manual acks
// (Ack(multiple) every prefetch/2, -opt ack_every).
func init() {
	register("events", libEvents)
	register("raw-events", rawEvents)
}

func eventsOpts(cfg config) (listeners, prefetch int, err error) {
	if listeners, err = cfg.optInt("listeners", 1); err != nil {
		return 0, 0, err
	}
	if listeners < 1 {
		return 0, 0, errors.New("-opt listeners must be >= 1")
	}
	prefetch = cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	return listeners, prefetch, nil
}

// eventsNode is one service instance of the events scenario.
type eventsNode struct {
	conn   *rabbitmq.Connection
	pub    *rabbitmq.Publisher
	sub    *rabbitmq.Subscriber
	router *message.Router
	bus    *events.Bus
	done   chan error
}

var benchEventExchange = rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}

func newEventsNode(ctx context.Context, cfg config, service string, prefetch int) (*eventsNode, error) {
	n := &eventsNode{}
	var err error
	if n.conn, err = rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: cfg.url, Name: "mmbench-events " + service}); err != nil {
		return nil, err
	}
	if err := n.conn.Connect(ctx); err != nil {
		return nil, err
	}
	if n.pub, err = rabbitmq.NewPublisher(n.conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &benchEventExchange}); err != nil {
		return nil, err
	}
	if n.sub, err = rabbitmq.NewSubscriber(n.conn, rabbitmq.SubscriberConfig{
		Declare:  []rabbitmq.Exchange{benchEventExchange},
		Prefetch: prefetch,
		Queue: func(topic string) rabbitmq.Queue {
			q, _ := n.bus.Queue(topic)
			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete,
				Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
		},
	}); err != nil {
		return nil, err
	}
	if n.router, err = message.NewRouter(message.RouterConfig{}, watermill.NopLogger{}); err != nil {
		return nil, err
	}
	n.bus, err = events.New(events.Config{Service: service, Publisher: n.pub, Subscriber: n.sub, Router: n.router})
	return n, err
}

func (n *eventsNode) run() {
	n.done = make(chan error, 1)
	go func() { n.done <- n.router.Run(context.Background()) }()
	<-n.router.Running()
}

func (n *eventsNode) close() {
	_ = n.bus.Close()
	if n.done != nil {
		_ = n.router.Close()
		<-n.done
	}
	_ = n.sub.Close()
	_ = n.pub.Close()
	_ = n.conn.Close()
}

func libEvents(ctx context.Context, cfg config) (result, error) {
	listeners, prefetch, err := eventsOpts(cfg)
	if err != nil {
		return result{}, err
	}
	target := "mmbench.events." + uuid.NewString()[:8]
	service := "mmbench-events"

	var handled atomic.Int64
	all := make(chan struct{})
	want := int64(cfg.n * listeners)
	for range listeners {
		n, err := newEventsNode(ctx, cfg, service, prefetch)
		if err != nil {
			return result{}, err
		}
		defer n.close()
		l, err := n.bus.Listen(target, "evt.*", func(*message.Message) error {
			if handled.Add(1) == want {
				close(all)
			}
			return nil
		})
		if err != nil {
			return result{}, err
		}
		n.run()
		select {
		case <-l.Started():
		case <-ctx.Done():
			return result{}, ctx.Err()
		}
	}

	emitter, err := newEventsNode(ctx, cfg, service+"-emitter", prefetch)
	if err != nil {
		return result{}, err
	}
	defer emitter.close()
	body := payload(cfg.size)
	// Warm-up: opens the publisher's channel; no listener matches this key.
	if err := emitter.bus.Emit(ctx, target, "warmup", body, nil); err != nil {
		return result{}, fmt.Errorf("warm-up emit: %w", err)
	}

	start := time.Now()
	if err := spread(ctx, cfg.n, cfg.c, func(ctx context.Context) error {
		return emitter.bus.Emit(ctx, target, "evt.x", body, nil)
	}); err != nil {
		return result{}, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		return result{}, fmt.Errorf("listeners handled %d of %d events: %w", handled.Load(), want, ctx.Err())
	}
	elapsed := time.Since(start)
	return result{
		Seconds: elapsed.Seconds(),
		Opts: fmt.Sprintf("transient events, %d Emit callers each waiting for its confirm, %d listener instance(s) (own connection, router, exclusive queue), prefetch=%d",
			cfg.c, listeners, prefetch),
	}, nil
}

// spread runs call n times over c goroutines and returns the first error.
func spread(ctx context.Context, n, c int, call func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for w := range c {
		count := n / c
		if w < n%c {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range count {
				if err := call(ctx); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func rawEvents(ctx context.Context, cfg config) (result, error) {
	listeners, prefetch, err := eventsOpts(cfg)
	if err != nil {
		return result{}, err
	}
	ackEvery, err := cfg.optInt("ack_every", max(1, prefetch/2))
	if err != nil {
		return result{}, err
	}
	if ackEvery < 1 {
		return result{}, errors.New("-opt ack_every must be >= 1")
	}
	target := "mmbench.raw-events." + uuid.NewString()[:8]

	var handled atomic.Int64
	all := make(chan struct{})
	want := int64(cfg.n * listeners)
	var consumers sync.WaitGroup
	var conns []*amqp.Connection
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		consumers.Wait()
	}()
	for range listeners {
		conn, ch, err := dial(cfg.url)
		if err != nil {
			return result{}, err
		}
		conns = append(conns, conn)
		if err := ch.ExchangeDeclare(wire.EventExchange, "topic", true, false, false, false, nil); err != nil {
			return result{}, err
		}
		q, err := ch.QueueDeclare(wire.ListenQueue("mmbench-raw-events", uuid.NewString()), false, true, true, false, nil)
		if err != nil {
			return result{}, err
		}
		if err := ch.QueueBind(q.Name, target+".evt.*", wire.EventExchange, false, nil); err != nil {
			return result{}, err
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return result{}, err
		}
		deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
		if err != nil {
			return result{}, err
		}
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			i := 0
			for d := range deliveries {
				i++
				if i%ackEvery == 0 || i == cfg.n {
					_ = d.Ack(true)
				}
				if handled.Add(1) == want {
					close(all)
				}
			}
		}()
	}
	conn, ch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	if err := ch.Confirm(false); err != nil {
		return result{}, err
	}
	msg := amqp.Publishing{ContentType: wire.ContentType, Headers: amqp.Table{"__mms": amqp.Table{}}, Body: payload(cfg.size)}
	emit := func(ctx context.Context, key string) error {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, wire.EventExchange, key, false, false, msg)
		if err != nil {
			return err
		}
		ok, err := dc.WaitContext(ctx)
		if err == nil && !ok {
			err = errors.New("event nacked")
		}
		return err
	}
	if err := emit(ctx, target+".warmup"); err != nil {
		return result{}, err
	}

	start := time.Now()
	if err := spread(ctx, cfg.n, cfg.c, func(ctx context.Context) error { return emit(ctx, target+".evt.x") }); err != nil {
		return result{}, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		return result{}, fmt.Errorf("listeners handled %d of %d events: %w", handled.Load(), want, ctx.Err())
	}
	elapsed := time.Since(start)
	return result{
		Seconds: elapsed.Seconds(),
		Opts: fmt.Sprintf("transient events, %d publishers sharing one confirm channel each waiting for its confirm, %d listener connection(s) (exclusive queue), prefetch=%d, ack multiple every %d",
			cfg.c, listeners, prefetch, ackEvery),
	}, nil
}
