package rabbitmq

// The election lock of micromessaging v3 (WIRE.md, "Peer status and election"): an
// exclusive queue that whoever declares it first holds until its connection closes.
// Built only on the exported Connection.Channel; patterns/election uses it through its
// Locker interface.

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// LockHeldError is returned by TryLock when another connection holds the lock queue:
// the broker answered the declaration with 405 RESOURCE_LOCKED (which also closed the
// channel TryLock had opened for it). LockHeld reports true, which is how
// patterns/election recognizes it without importing this package.
type LockHeldError struct {
	Queue string
	Err   *amqp.Error // the broker's channel.close
}

func (e *LockHeldError) Error() string {
	return fmt.Sprintf("rabbitmq: lock %s is held by another connection (%d %s)", e.Queue, e.Err.Code, e.Err.Reason)
}

// Unwrap returns the broker's error.
func (e *LockHeldError) Unwrap() error { return e.Err }

// LockHeld reports true: another connection holds the lock.
func (e *LockHeldError) LockHeld() bool { return true }

// TryLock makes one attempt to take the lock called queue: it opens a channel (waiting
// for the connection, bounded by ctx) and declares queue exclusive (durable=true,
// autoDelete=false, no arguments, as amqplib does; RabbitMQ reports exclusive queues as
// transient either way). It never consumes from or publishes to the queue.
//
// On success this Connection holds the lock until release is called or the channel or
// connection closes; lost is closed then (after release too). The lock does not survive
// a reconnect: the broker deletes an exclusive queue when the connection that declared it
// closes. release deletes the queue, so others can take the lock at once, and closes the
// channel; it is idempotent. Call it after the lock was lost too, before trying again:
// when only the channel failed, the connection still owns the queue, and release deletes
// it on a new channel (bounded by ctx; skipped while the Connection is not Connected,
// since then the broker has deleted it already).
//
// When another connection holds the lock, TryLock returns a *LockHeldError. Other errors
// (not connected, closed, ctx) are returned as Channel returns them, or wrapped. ctx
// bounds the wait for the connection; the declaration itself is one broker round trip.
//
// Exclusive queues belong to a connection, not to a channel: a second TryLock on the
// same Connection while the lock is held succeeds too. Give each elector its own
// Connection, or at most one elector per service name per Connection.
func (c *Connection) TryLock(ctx context.Context, queue string) (lost <-chan struct{}, release func(context.Context) error, err error) {
	ch, err := c.Channel(ctx)
	if err != nil {
		return nil, nil, err
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if _, err := ch.QueueDeclare(queue, true, false, true, false, nil); err != nil {
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.ResourceLocked {
			return nil, nil, &LockHeldError{Queue: queue, Err: aerr}
		}
		_ = ch.Close()
		return nil, nil, fmt.Errorf("rabbitmq: lock %s: %w", queue, err)
	}

	lostCh := make(chan struct{})
	go func() {
		// amqp091 sends the error (connection or channel closed by the broker) or closes
		// the notification channel (an orderly Close); either way the lock is gone.
		<-closed
		close(lostCh)
	}()
	var once sync.Once
	var relErr error
	release = func(ctx context.Context) error {
		once.Do(func() { relErr = c.releaseLock(ctx, ch, queue, lostCh) })
		return relErr
	}
	return lostCh, release, nil
}

// releaseLock gives up a lock taken by TryLock on channel ch.
func (c *Connection) releaseLock(ctx context.Context, ch *amqp.Channel, queue string, lost <-chan struct{}) error {
	select {
	case <-lost:
		// The lock channel is gone. If the connection is too, so is the queue; if only
		// the channel failed, this connection still owns the queue: delete it on a new
		// channel. (Should the connection have been replaced meanwhile, the delete is
		// harmless: nobody holds the queue, or another connection does and the broker
		// refuses with 405, which closes only that throwaway channel.)
		if c.State() != Connected {
			return nil
		}
		tmp, err := c.Channel(ctx)
		if err != nil {
			return fmt.Errorf("rabbitmq: release lock %s: %w", queue, err)
		}
		defer tmp.Close()
		if _, err := tmp.QueueDelete(queue, false, false, false); err != nil {
			var aerr *amqp.Error
			if errors.As(err, &aerr) && (aerr.Code == amqp.ResourceLocked || aerr.Code == amqp.NotFound) {
				return nil
			}
			return fmt.Errorf("rabbitmq: release lock %s: %w", queue, err)
		}
		return nil
	default:
	}
	var relErr error
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		relErr = fmt.Errorf("rabbitmq: release lock %s: %w", queue, err)
	}
	if err := ch.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) && relErr == nil {
		relErr = fmt.Errorf("rabbitmq: release lock %s: %w", queue, err)
	}
	return relErr
}
