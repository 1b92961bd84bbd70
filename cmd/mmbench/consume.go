package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/rabbitmq"
)

// consume: n persistent messages are pre-filled raw (untimed), then drained through a
// Watermill message.Router handler on a rabbitmq.Subscriber (prefetch 100, -prefetch)
// that returns nil, so the router acks each message. The clock runs from the router
// running to the n-th message handled. Twin: raw-consume.
func init() {
	register("consume", libConsume)
}

func libConsume(ctx context.Context, cfg config) (result, error) {
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	q := queueName("consume")
	rconn, rch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer rconn.Close()
	// Declared as the subscriber's default Queue declares it: durable, named for the topic, no args.
	if _, err := rch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)
	if err := prefill(ctx, cfg.url, q, cfg.n, cfg.size); err != nil {
		return result{}, err
	}

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: cfg.url, Name: "mmbench-consume"})
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		return result{}, err
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: prefetch})
	if err != nil {
		return result{}, err
	}
	defer sub.Close()

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return result{}, err
	}
	var handled atomic.Int64
	all := make(chan time.Time, 1)
	router.AddConsumerHandler("mmbench-consume", q, sub, func(msg *message.Message) error {
		if handled.Add(1) == int64(cfg.n) {
			all <- time.Now()
		}
		return nil
	})

	runCtx, stopRouter := context.WithCancel(ctx)
	defer stopRouter()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(runCtx) }()
	select {
	case <-router.Running():
	case err := <-runErr:
		return result{}, fmt.Errorf("router stopped before running: %w", err)
	case <-ctx.Done():
		return result{}, ctx.Err()
	}
	start := time.Now()
	var end time.Time
	select {
	case end = <-all:
	case err := <-runErr:
		return result{}, fmt.Errorf("router stopped after %d of %d messages: %v", handled.Load(), cfg.n, err)
	case <-ctx.Done():
		return result{}, fmt.Errorf("after %d of %d messages: %w", handled.Load(), cfg.n, ctx.Err())
	}
	elapsed := end.Sub(start)

	if err := router.Close(); err != nil {
		return result{}, err
	}
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		return result{}, err
	}
	if got := handled.Load(); got != int64(cfg.n) {
		return result{}, fmt.Errorf("handled %d messages, want %d (redeliveries?)", got, cfg.n)
	}
	return result{
		Seconds:     elapsed.Seconds(),
		Concurrency: 1,
		Opts:        fmt.Sprintf("persistent, pre-filled, message.Router handler on rabbitmq.Subscriber, prefetch=%d, router acks each", prefetch),
	}, nil
}
