package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// tasks: C goroutines (-c) call tasks.Client.Task (persistent, mandatory, returns once
// confirmed) on a publishing connection; one tasks.Worker handler on a Watermill router
// (consuming connection, prefetch 100 or -prefetch) handles each task (no-op) and acks
// it. The clock runs from the first Task to the N-th task handled. The request queue is
// q.requests.mmbench-tasks-<id>.work (wire protocol name), deleted afterwards with the
// worker's retry and dead queues (none are used on this path).
//
// raw-tasks: the same on plain amqp091-go: one channel in confirm mode shared by C
// goroutines, each publishing a Node-shaped persistent mandatory task and waiting for
// its confirm; one consumer on a second connection with manual acks (Ack(multiple)
// every prefetch/2, -opt ack_every).
func init() {
	register("tasks", libTasks)
	register("raw-tasks", rawTasks)
}

func libTasks(ctx context.Context, cfg config) (result, error) {
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	service, route := "mmbench-tasks-"+uuid.NewString()[:8], "work"
	queue := wire.RequestQueue(service, route)
	defer deleteTaskQueues(cfg.url, service, route)

	pubConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: cfg.url, Name: "mmbench-tasks publish"})
	if err != nil {
		return result{}, err
	}
	defer pubConn.Close()
	subConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: cfg.url, Name: "mmbench-tasks consume"})
	if err != nil {
		return result{}, err
	}
	defer subConn.Close()
	for _, c := range []*rabbitmq.Connection{pubConn, subConn} {
		if err := c.Connect(ctx); err != nil {
			return result{}, err
		}
	}
	pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{Mandatory: true})
	if err != nil {
		return result{}, err
	}
	defer pub.Close()
	sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{
		Prefetch: prefetch,
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
	})
	if err != nil {
		return result{}, err
	}
	defer sub.Close()
	worker, err := tasks.NewWorker(tasks.WorkerConfig{Service: service, Publisher: pub, Channels: pubConn})
	if err != nil {
		return result{}, err
	}
	defer worker.Close()
	client, err := tasks.NewClient(tasks.ClientConfig{Publisher: pub})
	if err != nil {
		return result{}, err
	}

	var handled atomic.Int64
	all := make(chan struct{})
	want := int64(cfg.n)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return result{}, err
	}
	h := r.AddConsumerHandler("tasks."+route, queue, sub, worker.Handler(route, func(*message.Message) error {
		if handled.Add(1) == want {
			close(all)
		}
		return nil
	}))
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(context.Background()) }()
	defer func() { _ = r.Close(); <-runDone }()
	select {
	case <-h.Started(): // the request queue is declared
	case <-ctx.Done():
		return result{}, ctx.Err()
	}

	body := payload(cfg.size)
	start := time.Now()
	if err := spread(ctx, cfg.n, cfg.c, func(ctx context.Context) error {
		return client.Task(ctx, service, route, body, nil)
	}); err != nil {
		return result{}, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		return result{}, fmt.Errorf("worker handled %d of %d tasks: %w", handled.Load(), want, ctx.Err())
	}
	elapsed := time.Since(start)
	return result{
		Seconds: elapsed.Seconds(),
		Opts: fmt.Sprintf("persistent mandatory tasks, %d Task callers each waiting for its confirm, one tasks.Worker on a router, prefetch=%d, separate publish/consume connections",
			cfg.c, prefetch),
	}, nil
}

// deleteTaskQueues deletes the request, retry and dead queues of a benchmark route.
func deleteTaskQueues(url, service, route string) {
	deleteQueue(url, wire.RequestQueue(service, route))
	conn, ch, err := dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	for n := 1; n < tasks.DefaultMaxAttempts; n++ {
		_, _ = ch.QueueDelete(tasks.RetryQueue(service, route, n), false, false, false)
	}
	_, _ = ch.QueueDelete(tasks.DeadQueue(service, route), false, false, false)
}

func rawTasks(ctx context.Context, cfg config) (result, error) {
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	ackEvery, err := cfg.optInt("ack_every", max(1, prefetch/2))
	if err != nil {
		return result{}, err
	}
	if ackEvery < 1 {
		return result{}, errors.New("-opt ack_every must be >= 1")
	}
	service, route := "mmbench-raw-tasks-"+uuid.NewString()[:8], "work"
	queue := wire.RequestQueue(service, route)
	defer deleteQueue(cfg.url, queue)

	cconn, cch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	var handled atomic.Int64
	all := make(chan struct{})
	consumerDone := make(chan struct{})
	defer func() { cconn.Close(); <-consumerDone }()
	if _, err := cch.QueueDeclare(queue, true, false, false, false, wire.RequestQueueArgs()); err != nil {
		close(consumerDone)
		return result{}, err
	}
	if err := cch.Qos(prefetch, 0, false); err != nil {
		close(consumerDone)
		return result{}, err
	}
	deliveries, err := cch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		close(consumerDone)
		return result{}, err
	}
	go func() {
		defer close(consumerDone)
		i := 0
		for d := range deliveries {
			i++
			if i%ackEvery == 0 || i == cfg.n {
				_ = d.Ack(true)
			}
			if handled.Add(1) == int64(cfg.n) {
				close(all)
			}
		}
	}()

	conn, ch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	if err := ch.Confirm(false); err != nil {
		return result{}, err
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	body := payload(cfg.size)
	send := func(ctx context.Context) error {
		msg := amqp.Publishing{
			ContentType: wire.ContentType, DeliveryMode: amqp.Persistent, MessageId: uuid.NewString(), Body: body,
			Headers: amqp.Table{
				"idRequest": uuid.NewString(),
				"__mms":     amqp.Table{"route": route, "isTask": true, "iat": time.Now().UnixMilli()},
			},
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, msg)
		if err != nil {
			return err
		}
		ok, err := dc.WaitContext(ctx)
		if err == nil && !ok {
			err = errors.New("task nacked")
		}
		return err
	}

	start := time.Now()
	if err := spread(ctx, cfg.n, cfg.c, send); err != nil {
		return result{}, err
	}
	select {
	case r := <-returns:
		return result{}, fmt.Errorf("task returned unroutable: %s", r.RoutingKey)
	default:
	}
	select {
	case <-all:
	case <-ctx.Done():
		return result{}, fmt.Errorf("consumer handled %d of %d tasks: %w", handled.Load(), cfg.n, ctx.Err())
	}
	elapsed := time.Since(start)
	return result{
		Seconds: elapsed.Seconds(),
		Opts: fmt.Sprintf("persistent mandatory tasks, %d publishers sharing one confirm channel each waiting for its confirm, one consumer, prefetch=%d, ack multiple every %s",
			cfg.c, prefetch, strconv.Itoa(ackEvery)),
	}, nil
}
