// Command tasks shows patterns/tasks on the RabbitMQ transport: confirmed tasks, a
// worker whose failures are retried with backoff and then dead-lettered, and a replay
// of the dead letters.
//
//	go run ./examples/tasks                   # the demo: send and work in one process
//	go run ./examples/tasks -against mmkit    # send 20 tasks to a Node-like peer's `work` route
//	                                          # (conformance serve -name mmkit) and check its workCount
//
// With -against, it reads the target's workCount (RPC), sends 20 tasks to its work
// route, waits a second, reads workCount again, prints one JSON line like the
// conformance kit's checks and exits 1 unless the count rose by exactly 20.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func main() {
	url := flag.String("url", "", "AMQP URL (default $RABBIT_URI, else the local broker)")
	against := flag.String("against", "", "service whose work route gets 20 tasks, checked with workCount (e.g. mmkit)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if *against != "" {
		err = checkAgainst(ctx, *url, *against)
	} else {
		err = demo(ctx, *url)
	}
	if err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// node is the transport of one service instance, wired as the router facade wires it.
type node struct {
	conn   *rabbitmq.Connection
	pub    *rabbitmq.Publisher
	sub    *rabbitmq.Subscriber
	client *tasks.Client
}

func newNode(ctx context.Context, url, name string) (*node, error) {
	n := &node{}
	var err error
	if n.conn, err = rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "examples/tasks " + name}); err != nil {
		return nil, err
	}
	if err := n.conn.Connect(ctx); err != nil {
		return nil, err
	}
	// Tasks go to the default exchange, mandatory (unroutable fails at once), confirmed.
	if n.pub, err = rabbitmq.NewPublisher(n.conn, rabbitmq.PublisherConfig{Mandatory: true}); err != nil {
		return nil, err
	}
	// Request queues are declared exactly as Node declares them.
	if n.sub, err = rabbitmq.NewSubscriber(n.conn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
		Prefetch: 10,
	}); err != nil {
		return nil, err
	}
	n.client, err = tasks.NewClient(tasks.ClientConfig{Publisher: n.pub})
	return n, err
}

func (n *node) close() error { return errors.Join(n.sub.Close(), n.pub.Close(), n.conn.Close()) }

func demo(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	const service, route = "example-images", "resize"
	n, err := newNode(ctx, url, service)
	if err != nil {
		return err
	}
	defer func() {
		if err := n.close(); err != nil {
			log.Print(err)
		}
	}()
	defer deleteQueues(n, service, route) // a demo: leave nothing behind

	worker, err := tasks.NewWorker(tasks.WorkerConfig{
		Service: service, Publisher: n.pub, Channels: n.conn,
		MaxAttempts: 3, InitialBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := worker.Close(); err != nil {
			log.Print(err)
		}
	}()

	var mu sync.Mutex
	fixed := false
	done := make(chan string, 10)
	handler := func(msg *message.Message) error {
		var job struct{ Image string }
		if err := json.Unmarshal(msg.Payload, &job); err != nil {
			return err
		}
		mu.Lock()
		ok := fixed
		mu.Unlock()
		attempt := tasks.Attempt(msg)
		switch {
		case job.Image == "flaky.png" && attempt == 1:
			fmt.Printf("%-10s attempt %d: fails, retried after a backoff\n", job.Image, attempt)
			return errors.New("storage timeout")
		case job.Image == "broken.png" && !ok:
			fmt.Printf("%-10s attempt %d: fails\n", job.Image, attempt)
			return errors.New("cannot decode image")
		}
		if r := msg.Metadata.Get(tasks.HeaderReplays); r != "" {
			fmt.Printf("%-10s attempt %d: done (replayed %s time)\n", job.Image, attempt, r)
		} else {
			fmt.Printf("%-10s attempt %d: done\n", job.Image, attempt)
		}
		done <- job.Image
		return nil
	}

	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	h := r.AddConsumerHandler("tasks."+route, worker.Topic(route), n.sub, worker.Handler(route, handler))
	ran := make(chan error, 1)
	go func() { ran <- r.Run(context.Background()) }()
	defer func() { // before the worker closes: stop taking tasks, then join Run
		if err := errors.Join(r.Close(), <-ran); err != nil {
			log.Print(err)
		}
	}()
	select {
	case <-h.Started(): // the request queue exists: tasks are routable
	case <-ctx.Done():
		return ctx.Err()
	}

	for _, img := range []string{"a.png", "flaky.png", "broken.png"} {
		if err := n.client.Task(ctx, service, route, map[string]string{"image": img}, nil); err != nil {
			return err
		}
	}
	if err := n.client.Task(ctx, service, "no-such-route", nil, nil); errors.Is(err, tasks.ErrUnroutable) {
		fmt.Println("a task nobody serves fails at once:", err)
	} else {
		return fmt.Errorf("a task nobody serves: got %v, want ErrUnroutable", err)
	}
	for range 2 {
		if err := wait(ctx, done); err != nil {
			return err
		}
	}
	// broken.png fails 3 times (1 + 2 retries) and lands in q.dead.example-images.resize.
	dead := tasks.DeadQueue(service, route)
	for {
		if n, err := queueLen(n, dead); err != nil {
			return err
		} else if n == 1 {
			break
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	fmt.Println("dead-lettered to", dead, "- fixing the bug and replaying")
	mu.Lock()
	fixed = true
	mu.Unlock()
	moved, err := tasks.Replay(ctx, n.conn, service, route)
	if err != nil {
		return err
	}
	fmt.Println("replayed", moved)
	return wait(ctx, done)
}

func wait(ctx context.Context, done <-chan string) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func queueLen(n *node, queue string) (int, error) {
	ch, err := n.conn.Channel(context.Background())
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return q.Messages, err
}

func deleteQueues(n *node, service, route string) {
	ch, err := n.conn.Channel(context.Background())
	if err != nil {
		log.Print(err)
		return
	}
	defer ch.Close()
	for _, q := range []string{wire.RequestQueue(service, route), tasks.RetryQueue(service, route, 1),
		tasks.RetryQueue(service, route, 2), tasks.DeadQueue(service, route)} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			log.Print(err)
			return
		}
	}
}

// checkAgainst sends the conformance contract's tasks to target and checks workCount.
func checkAgainst(ctx context.Context, url, target string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := newNode(ctx, url, "mmgo-tasker-"+uuid.NewString()[:8])
	if err != nil {
		return err
	}
	defer n.close()
	svc, err := router.New("mmgo-tasks-check", router.Config{URL: url})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return err
	}
	workCount := func() (int, error) {
		r, err := svc.Request(ctx, target, "workCount", map[string]any{})
		if err != nil {
			return 0, err
		}
		var c struct{ Count *int }
		if err := json.Unmarshal(r.Body, &c); err != nil || c.Count == nil {
			return 0, fmt.Errorf("workCount answered %s", r.Body)
		}
		return *c.Count, nil
	}
	before, err := workCount()
	if err != nil {
		return err
	}
	for i := range 20 {
		if err := n.client.Task(ctx, target, "work", map[string]int{"i": i}, nil); err != nil {
			return err
		}
	}
	time.Sleep(time.Second) // as the kit's check does
	after, err := workCount()
	if err != nil {
		return err
	}
	ok := after-before == 20
	line, _ := json.Marshal(map[string]any{"check": "go-tasks", "ok": ok, "detail": map[string]int{"before": before, "after": after}})
	fmt.Println(string(line))
	if !ok {
		return fmt.Errorf("%s's workCount rose by %d, want 20", target, after-before)
	}
	return nil
}
