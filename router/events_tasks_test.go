package router

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/wire"
	amqp "github.com/rabbitmq/amqp091-go"
)

func TestEmitListenTask(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("facade")
	svc, err := New(name, Config{URL: url, Tasks: tasks.WorkerConfig{MaxAttempts: 2, InitialBackoff: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := svc.Emit(ctx, "x", "y", nil, nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Emit before Connect: %v", err)
	}
	heard := make(chan string, 10)
	worked := make(chan int, 10)
	if _, err := svc.Listen(name, "evt.*", func(m *message.Message) error { heard <- events.RoutingKey(m); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := svc.HandleTask("work", func(m *message.Message) error {
		worked <- tasks.Attempt(m)
		if string(m.Payload) == `"fail"` {
			return errors.New("x")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Handle("work", func(context.Context, *rpcRequest) (any, error) { return nil, nil }); !errors.Is(err, ErrDuplicateRoute) {
		t.Fatalf("Handle on a task route: %v", err)
	}
	if err := svc.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// after Connect
	late := make(chan string, 10)
	if _, err := svc.Listen(name, "late", func(m *message.Message) error { late <- events.RoutingKey(m); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := svc.HandleTask("late", func(m *message.Message) error { worked <- 100; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := svc.Emit(ctx, name, "evt.a", map[string]int{"a": 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Emit(ctx, name, "late", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Task(ctx, name, "work", "ok", nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Task(ctx, name, "late", "ok", nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Task(ctx, name, "nobody", "ok", nil); !errors.Is(err, tasks.ErrUnroutable) {
		t.Fatalf("unroutable: %v", err)
	}
	if err := svc.Task(ctx, name, "work", "fail", nil); err != nil {
		t.Fatal(err)
	}
	got := map[int]int{}
	for range 4 {
		select {
		case a := <-worked:
			got[a]++
		case <-ctx.Done():
			t.Fatalf("tasks: %v", got)
		}
	}
	if got[1] != 2 || got[2] != 1 || got[100] != 1 {
		t.Errorf("task attempts %v", got)
	}
	for _, c := range []chan string{heard, late} {
		select {
		case <-c:
		case <-ctx.Done():
			t.Fatal("event not heard")
		}
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	// clean the dead/retry/request queues of this test
	_ = deleteAll(url, name)
}

type rpcRequest = rpc.Request

func deleteAll(url, service string) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	for _, q := range []string{wire.RequestQueue(service, "work"), wire.RequestQueue(service, "late"),
		tasks.RetryQueue(service, "work", 1), tasks.DeadQueue(service, "work")} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return err
		}
	}
	return nil
}
