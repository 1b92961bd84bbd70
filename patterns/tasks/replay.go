package tasks

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// Replay moves the dead letters of route back to its request queue, so that workers
// (Go or Node) take them again from attempt 1. It moves at most the number of messages
// the dead-letter queue held when it started, one at a time: basic.get, publish to
// q.requests.<service>.<route> (persistent, mandatory, with the same body, properties
// and headers except that HeaderAttempt is removed, HeaderError kept and HeaderReplays
// incremented), wait for the broker's confirm, then ack the dead letter. A message is
// therefore never lost; if the process dies between the confirm and the ack, it is in
// both queues.
//
// It returns how many messages it moved. A missing dead-letter queue moves nothing and
// is no error. When the request queue does not exist (no worker ever declared it, or it
// expired), Replay stops with an error wrapping ErrUnroutable and leaves the message in
// the dead-letter queue. conn is usually the *rabbitmq.Connection of the service.
func Replay(ctx context.Context, conn ChannelOpener, service, route string) (int, error) {
	if service == "" || route == "" {
		return 0, fmt.Errorf("%w: replay needs a service and a route", ErrInvalid)
	}
	dead, target := DeadQueue(service, route), wire.RequestQueue(service, route)
	ch, err := conn.Channel(ctx)
	if err != nil {
		return 0, fmt.Errorf("tasks: replay %s: %w", dead, err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(dead, true, false, false, false, nil)
	if err != nil {
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
			return 0, nil
		}
		return 0, fmt.Errorf("tasks: replay %s: %w", dead, err)
	}
	if err := ch.Confirm(false); err != nil {
		return 0, fmt.Errorf("tasks: replay %s: confirm mode: %w", dead, err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))

	moved := 0
	for moved < q.Messages {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		d, ok, err := ch.Get(dead, false)
		if err != nil {
			return moved, fmt.Errorf("tasks: replay %s: get: %w", dead, err)
		}
		if !ok {
			break // emptied by someone else meanwhile
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", target, true, false, replayed(d))
		if err != nil {
			_ = d.Nack(false, true)
			return moved, fmt.Errorf("tasks: replay to %s: %w", target, err)
		}
		acked, err := dc.WaitContext(ctx)
		if err != nil {
			_ = d.Nack(false, true)
			return moved, fmt.Errorf("tasks: replay to %s: %w", target, err)
		}
		select {
		case <-returns: // the broker sends basic.return before the confirm
			_ = d.Nack(false, true)
			return moved, fmt.Errorf("tasks: replay to %s: %w", target, ErrUnroutable)
		default:
		}
		if !acked {
			_ = d.Nack(false, true)
			return moved, fmt.Errorf("tasks: replay to %s: the broker refused the message (basic.nack)", target)
		}
		if err := d.Ack(false); err != nil {
			return moved, fmt.Errorf("tasks: replay %s: ack: %w", dead, err)
		}
		moved++
	}
	return moved, nil
}

// replayed is the publishing that puts dead letter d back into its request queue.
func replayed(d amqp.Delivery) amqp.Publishing {
	h := make(amqp.Table, len(d.Headers)+1)
	replays := 0
	for k, v := range d.Headers {
		switch {
		case k == HeaderAttempt, k == "x-death", strings.HasPrefix(k, "x-first-death-"), strings.HasPrefix(k, "x-last-death-"):
		case k == HeaderReplays:
			if s, ok := v.(string); ok {
				replays, _ = strconv.Atoi(s)
			}
		default:
			h[k] = v
		}
	}
	h[HeaderReplays] = strconv.Itoa(replays + 1)
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}
