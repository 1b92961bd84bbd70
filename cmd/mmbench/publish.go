package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// publish: persistent messages to a durable queue through rabbitmq.Publisher with publisher
// confirms (its default) and the wire codec; C concurrent publishers each call Publish
// sequentially (with -opt batch=K, K messages per Publish call). The clock runs from the
// first Publish to the moment every Publish has returned nil, i.e. all are confirmed.
// Twin: raw-publish (one channel, pipelined confirms).
func init() {
	register("publish", libPublish)
}

func libPublish(ctx context.Context, cfg config) (result, error) {
	batch, err := cfg.optInt("batch", 1)
	if err != nil {
		return result{}, err
	}
	if batch < 1 {
		return result{}, fmt.Errorf("-opt batch must be >= 1")
	}
	q := queueName("publish")
	// The publisher sends to the default exchange and declares no queue: declare it raw.
	rconn, rch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer rconn.Close()
	if _, err := rch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: cfg.url, Name: "mmbench-publish"})
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		return result{}, err
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Marshaler: wire.Codec{Persistent: true}})
	if err != nil {
		return result{}, err
	}
	defer pub.Close()

	body := payload(cfg.size)
	newMsg := func() *message.Message {
		m := message.NewMessage(watermill.NewUUID(), body)
		m.SetContext(ctx)
		return m
	}
	// One warm-up message so that the channel is open before the clock starts, as raw-publish's is.
	if err := pub.Publish(q, newMsg()); err != nil {
		return result{}, fmt.Errorf("warm-up publish: %w", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, cfg.c)
	start := time.Now()
	for w := range cfg.c {
		count := cfg.n / cfg.c
		if w < cfg.n%cfg.c {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]*message.Message, 0, batch)
			for sent := 0; sent < count; sent += len(msgs) {
				msgs = msgs[:0]
				for range min(batch, count-sent) {
					msgs = append(msgs, newMsg())
				}
				if err := pub.Publish(q, msgs...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}
	if err := waitDepth(ctx, rch, q, cfg.n+1); err != nil { // sanity check, untimed
		return result{}, err
	}
	return result{
		Seconds: elapsed.Seconds(),
		Opts: fmt.Sprintf("persistent, durable queue, rabbitmq.Publisher with confirms, wire.Codec, %d publishers each calling Publish with %d message(s)",
			cfg.c, batch),
	}, nil
}
