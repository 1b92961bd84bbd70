package rabbitmq_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

func isLost(lost <-chan struct{}) bool {
	select {
	case <-lost:
		return true
	default:
		return false
	}
}

func waitLost(t *testing.T, lost <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatalf("lock not reported lost after %s", what)
	}
}

func TestLockIsExclusiveAndReleasable(t *testing.T) {
	queue := wire.LockQueue(testbroker.Name("locksvc"))
	a := connect(t, testbroker.Name("lock-a"))
	b := connect(t, testbroker.Name("lock-b"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	lost, release, err := a.TryLock(ctx, queue)
	if err != nil {
		t.Fatalf("first TryLock: %v", err)
	}
	for range 3 { // repeated attempts keep failing the same way
		_, _, err = b.TryLock(ctx, queue)
		var held *rabbitmq.LockHeldError
		if !errors.As(err, &held) || !held.LockHeld() || held.Queue != queue || held.Err.Code != 405 {
			t.Fatalf("TryLock while held = %v, want *LockHeldError (405)", err)
		}
	}
	if isLost(lost) {
		t.Fatal("holder lost the lock because of someone else's attempt")
	}
	// Exclusive queues belong to the connection: the holder's connection may declare again.
	lost2, release2, err := a.TryLock(ctx, queue)
	if err != nil {
		t.Fatalf("TryLock again on the holding connection: %v", err)
	}
	if err := release2(ctx); err != nil {
		t.Fatal(err)
	}
	waitLost(t, lost2, "release")

	if err := release(ctx); err != nil { // the queue is already gone: still fine
		t.Fatal(err)
	}
	if err := release(ctx); err != nil {
		t.Fatal(err)
	}
	waitLost(t, lost, "release")
	lostB, releaseB, err := b.TryLock(ctx, queue)
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	if err := releaseB(ctx); err != nil {
		t.Fatal(err)
	}
	waitLost(t, lostB, "release")
}

func TestLockLostWhenBrokerClosesConnection(t *testing.T) {
	queue := wire.LockQueue(testbroker.Name("locksvc"))
	nameA := testbroker.Name("lock-a")
	a := connect(t, nameA)
	b := connect(t, testbroker.Name("lock-b"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	lost, release, err := a.TryLock(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer release(ctx)
	if n := closeConnections(t, nameA); n != 1 {
		t.Fatalf("closed %d connections named %s, want 1", n, nameA)
	}
	waitLost(t, lost, "the broker closed the connection")
	// The broker deleted the exclusive queue with the connection: b takes it.
	lostB, releaseB, err := b.TryLock(ctx, queue)
	if err != nil {
		t.Fatalf("TryLock after the holder's connection was closed: %v", err)
	}
	// a reconnects and finds the lock held.
	waitFor(t, 10*time.Second, "a reconnects", func() bool { return a.State() == rabbitmq.Connected })
	if _, _, err := a.TryLock(ctx, queue); !errors.As(err, new(*rabbitmq.LockHeldError)) {
		t.Fatalf("TryLock on the new connection = %v, want *LockHeldError", err)
	}
	releaseB(ctx)
	waitLost(t, lostB, "release")
}

func TestLockLostOnClose(t *testing.T) {
	queue := wire.LockQueue(testbroker.Name("locksvc"))
	a := connect(t, testbroker.Name("lock-a"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lost, release, err := a.TryLock(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	waitLost(t, lost, "Close")
	if err := release(ctx); err != nil {
		t.Fatalf("release after Close: %v", err)
	}
	b := connect(t, testbroker.Name("lock-b"))
	_, releaseB, err := b.TryLock(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	releaseB(ctx)
}

func TestLockNeedsConnect(t *testing.T) {
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: testbroker.URL(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := conn.TryLock(context.Background(), "internal.x.lock"); !errors.Is(err, rabbitmq.ErrNotConnected) {
		t.Fatalf("TryLock before Connect = %v", err)
	}
}
