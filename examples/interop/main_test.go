package main

import (
	"errors"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestDeleteQueues: at exit serve deletes the request queues of its RPC and task routes
// and the retry and dead queues of its task routes when they are empty, but keeps a task
// route's request queue while a retry copy waits to go back to it, and keeps whatever
// is not empty.
func TestDeleteQueues(t *testing.T) {
	url := testbroker.URL(t)
	service := testbroker.Name("interop")
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	retry := tasks.RetryQueue(service, "work", 2)
	all := []string{wire.RequestQueue(service, "echo"), wire.RequestQueue(service, "work"), tasks.RetryQueue(service, "work", 1), retry, tasks.DeadQueue(service, "work")}
	t.Cleanup(func() {
		for _, q := range all {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
	for _, q := range all[:2] {
		if _, err := ch.QueueDeclare(q, true, false, false, false, wire.RequestQueueArgs()); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range all[2:] {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
	if err := ch.Publish("", retry, false, false, amqp.Publishing{ContentType: "application/json", Body: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	if c := <-confirms; !c.Ack {
		t.Fatal("publish not confirmed")
	}
	exists := func(q string) bool {
		t.Helper()
		c, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.QueueDeclarePassive(q, false, false, false, false, nil)
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}

	deleteQueues(url, service, []string{"echo", "work"}, []string{"work"})
	for q, want := range map[string]bool{all[0]: false, all[1]: true, all[2]: false, retry: true, all[4]: false} {
		if got := exists(q); got != want {
			t.Errorf("with a retry copy waiting: %s exists = %v, want %v", q, got, want)
		}
	}
	if _, err := ch.QueuePurge(retry, false); err != nil {
		t.Fatal(err)
	}
	deleteQueues(url, service, []string{"echo", "work"}, []string{"work"})
	for _, q := range all {
		if exists(q) {
			t.Errorf("%s still exists once everything is empty", q)
		}
	}
}
