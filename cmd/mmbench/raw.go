package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Raw amqp091-go twins of the library's publish and consume scenarios: the ceiling the
// library is compared against (same work as ../shared/bench-baseline's raw-publish and
// raw-consume, on mmbench.* queues).

func init() {
	register("raw-publish", rawPublish)
	register("raw-consume", rawConsume)
}

// rawPublish: ONE channel in confirm mode publishes n persistent messages to a durable
// queue, with up to -opt window (default 1000) unconfirmed; the clock runs from the first
// publish to the last confirm. With -c C, C goroutines share that channel (n spread over
// them). Messages carry what the library's publish sends (content type, a UUID message
// id, an empty __mms table), so both put the same bytes on the wire; -opt wire=false
// sends the bare body, and with -c 1 is then exactly the baseline's raw-publish.
func rawPublish(ctx context.Context, cfg config) (result, error) {
	window, err := cfg.optInt("window", 1000)
	if err != nil {
		return result{}, err
	}
	if window < 1 {
		return result{}, fmt.Errorf("-opt window must be >= 1")
	}
	conn, ch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	q := queueName("raw-publish")
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)

	wireShape := cfg.extra["wire"] != "false"
	body := payload(cfg.size)
	mk := func() amqp.Publishing { return amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body} }
	shape := "bare body"
	if wireShape {
		// What the library's publish sends, built by hand: the same bytes on the wire.
		mk = func() amqp.Publishing {
			return amqp.Publishing{
				DeliveryMode: amqp.Persistent, ContentType: "application/json",
				MessageId: uuid.NewString(), Headers: amqp.Table{"__mms": amqp.Table{}}, Body: body,
			}
		}
		shape = "wire format (contentType, messageId, __mms)"
	}
	start := time.Now()
	if err := publishConfirmedWith(ctx, ch, q, cfg.n, cfg.c, window, mk); err != nil {
		return result{}, err
	}
	elapsed := time.Since(start)
	if err := waitDepth(ctx, ch, q, cfg.n); err != nil { // a sanity check, untimed
		return result{}, err
	}
	return result{
		Seconds: elapsed.Seconds(),
		Opts:    fmt.Sprintf("persistent, %s, durable queue, one channel shared by %d goroutines, confirm window=%d", shape, cfg.c, window),
	}, nil
}

// publishConfirmed puts ch in confirm mode and publishes n persistent messages with body to
// queue from c goroutines sharing ch, at most window unconfirmed at any time; it returns
// once all are confirmed (an error if any was nacked).
func publishConfirmed(ctx context.Context, ch *amqp.Channel, queue string, n, c int, body []byte, window int) error {
	msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body}
	return publishConfirmedWith(ctx, ch, queue, n, c, window, func() amqp.Publishing { return msg })
}

// publishConfirmedWith is publishConfirmed with each message made by mk.
func publishConfirmedWith(ctx context.Context, ch *amqp.Channel, queue string, n, c, window int, mk func() amqp.Publishing) error {
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, window))
	slots := make(chan struct{}, window)
	var confirmErr error
	confirmed := make(chan struct{}) // closed when the confirm reader stops, for any reason
	go func() {
		defer close(confirmed)
		nacks := 0
		for range n {
			cf, ok := <-confirms
			if !ok {
				confirmErr = errors.New("channel closed while waiting for confirms")
				return
			}
			if !cf.Ack {
				nacks++
			}
			<-slots
		}
		if nacks > 0 {
			confirmErr = fmt.Errorf("%d publishes nacked", nacks)
		}
	}()

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
				select {
				case slots <- struct{}{}:
				case <-confirmed: // the channel died: its error is confirmErr
					return
				case <-ctx.Done():
					errs <- ctx.Err()
					return
				}
				if err := ch.PublishWithContext(ctx, "", queue, false, false, mk()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	select {
	case <-confirmed:
		return confirmErr
	case <-ctx.Done():
		return fmt.Errorf("waiting for confirms: %w", ctx.Err())
	}
}

// rawConsume: n persistent messages are pre-filled (untimed); one consumer with manual
// acks, prefetch 100 (-prefetch), Ack(multiple) every prefetch/2 deliveries (-opt
// ack_every); the clock runs from Consume to the n-th delivery acked.
func rawConsume(ctx context.Context, cfg config) (result, error) {
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	ackEvery, err := cfg.optInt("ack_every", max(1, prefetch/2))
	if err != nil {
		return result{}, err
	}
	if ackEvery < 1 {
		return result{}, fmt.Errorf("-opt ack_every must be >= 1")
	}
	conn, ch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	q := queueName("raw-consume")
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)
	if err := prefill(ctx, cfg.url, q, cfg.n, cfg.size); err != nil {
		return result{}, err
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return result{}, err
	}

	start := time.Now()
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return result{}, err
	}
	for i := 1; i <= cfg.n; i++ {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return result{}, fmt.Errorf("consumer closed after %d deliveries", i-1)
			}
			if i%ackEvery == 0 || i == cfg.n {
				if err := d.Ack(true); err != nil {
					return result{}, err
				}
			}
		case <-ctx.Done():
			return result{}, fmt.Errorf("after %d deliveries: %w", i-1, ctx.Err())
		}
	}
	elapsed := time.Since(start)
	return result{
		Seconds:     elapsed.Seconds(),
		Concurrency: 1,
		Opts:        fmt.Sprintf("persistent, pre-filled, one consumer, prefetch=%d, ack multiple every %d", prefetch, ackEvery),
	}, nil
}
