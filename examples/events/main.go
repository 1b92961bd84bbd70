// Command events shows patterns/events on the RabbitMQ transport: listeners with topic
// wildcards, a durable shared listen, and events emitted with broker confirms.
//
//	go run ./examples/events                   # the demo: emit and listen in one process
//	go run ./examples/events -against mmkit    # emit to a Node-like peer (conformance serve -name mmkit)
//	                                           # and check with its `events` route that it heard them
//
// With -against, it emits interop.evt.created {"id":7} and interop.other.thing {"id":8},
// asks the target's `events` route (RPC) what it heard on interop.evt.*, prints one JSON
// line like the conformance kit's checks, and exits 1 unless the first was heard and the
// second was not.
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

	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func main() {
	url := flag.String("url", "", "AMQP URL (default $RABBIT_URI, else the local broker)")
	against := flag.String("against", "", "service to emit interop events to and check (e.g. mmkit)")
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

// node is the transport and the Bus of one service instance, wired as the router
// facade wires them.
type node struct {
	conn   *rabbitmq.Connection
	pub    *rabbitmq.Publisher
	sub    *rabbitmq.Subscriber
	router *message.Router
	bus    *events.Bus
	ran    chan error // Router.Run's result; nil until run
}

func newNode(ctx context.Context, url, service string) (*node, error) {
	n := &node{}
	var err error
	if n.conn, err = rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "examples/events " + service}); err != nil {
		return nil, err
	}
	if err := n.conn.Connect(ctx); err != nil {
		return nil, err
	}
	x := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	if n.pub, err = rabbitmq.NewPublisher(n.conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &x}); err != nil {
		return nil, err
	}
	if n.sub, err = rabbitmq.NewSubscriber(n.conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{x},
		Queue: func(topic string) rabbitmq.Queue {
			q, _ := n.bus.Queue(topic) // every topic of this subscriber is a listen queue of the Bus
			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete,
				Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
		},
	}); err != nil {
		return nil, err
	}
	if n.router, err = message.NewRouter(message.RouterConfig{}, watermill.NopLogger{}); err != nil {
		return nil, err
	}
	n.bus, err = events.New(events.Config{Service: service, Publisher: n.pub, Subscriber: n.sub, Router: n.router})
	return n, err
}

// run runs the router on a goroutine that close joins.
func (n *node) run() {
	n.ran = make(chan error, 1)
	go func() { n.ran <- n.router.Run(context.Background()) }()
}

func (n *node) close() error {
	errs := []error{n.bus.Close(), n.router.Close()}
	if n.ran != nil {
		errs = append(errs, <-n.ran)
	}
	return errors.Join(append(errs, n.sub.Close(), n.pub.Close(), n.conn.Close())...)
}

func demo(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	service := "example-shop"
	n, err := newNode(ctx, url, service)
	if err != nil {
		return err
	}
	defer func() {
		if err := n.close(); err != nil {
			log.Print(err)
		}
	}()

	var mu sync.Mutex
	var wg sync.WaitGroup
	heard := func(who string) message.NoPublishHandlerFunc {
		return func(msg *message.Message) error {
			mu.Lock()
			defer mu.Unlock()
			fmt.Printf("%-12s heard %-28s %s\n", who, events.RoutingKey(msg), msg.Payload)
			wg.Done()
			return nil
		}
	}
	// Per-instance listens (every instance gets a copy), as in Node.
	created, err := n.bus.Listen("orders", "created.*", heard("created.*"))
	if err != nil {
		return err
	}
	all, err := n.bus.Listen("orders", "#", heard("#"))
	if err != nil {
		return err
	}
	// A durable listen shared by the service's instances: q.pubSub.example-shop.durable.billing
	// keeps events while the service is down.
	durable, err := n.bus.Listen("orders", "paid", heard("durable"), events.Durable("billing"))
	if err != nil {
		return err
	}
	// A demo leaves nothing behind (a real service keeps its durable queue): stop the
	// listener first, or its consumer, cancelled by the deletion, would declare the
	// queue again.
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := durable.Stop(ctx); err != nil {
			log.Print(err)
		}
		deleteQueue(n, events.DurableQueue(service, "billing"))
	}()
	n.run()
	for _, l := range []*events.Listener{created, all, durable} {
		select {
		case <-l.Started(): // its queue is declared and bound
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	emits := []struct {
		route string
		body  any
		hears int
	}{
		{"created.eu", map[string]any{"id": 1}, 2},
		{"created.us", map[string]any{"id": 2}, 2},
		{"paid", map[string]any{"id": 1, "amount": 42}, 2},
	}
	for _, e := range emits {
		wg.Add(e.hears)
		if err := n.bus.Emit(ctx, "orders", e.route, e.body, map[string]string{"source": "example"}); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("not every event was heard: %w", ctx.Err())
	}
	return nil
}

// deleteQueue deletes a durable listen's queue; a real service keeps it.
func deleteQueue(n *node, queue string) {
	ch, err := n.conn.Channel(context.Background())
	if err != nil {
		log.Print(err)
		return
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		log.Print(err)
	}
}

// checkAgainst emits the conformance contract's events to target and asks its events route.
func checkAgainst(ctx context.Context, url, target string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := newNode(ctx, url, "mmgo-emitter-"+uuid.NewString()[:8])
	if err != nil {
		return err
	}
	defer func() {
		if err := n.close(); err != nil {
			log.Print(err)
		}
	}()
	if err := n.bus.Emit(ctx, "interop", "evt.created", map[string]int{"id": 7}, nil); err != nil {
		return err
	}
	if err := n.bus.Emit(ctx, "interop", "other.thing", map[string]int{"id": 8}, nil); err != nil {
		return err
	}
	time.Sleep(800 * time.Millisecond) // as the kit's check does

	svc, err := router.New("mmgo-events-check", router.Config{URL: url})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return err
	}
	r, err := svc.Request(ctx, target, "events", map[string]any{})
	if err != nil {
		return err
	}
	var list []struct {
		Key  string
		Body struct{ ID int }
	}
	if err := json.Unmarshal(r.Body, &list); err != nil {
		return fmt.Errorf("events route answered %s: %w", r.Body, err)
	}
	created, other := false, false
	for _, e := range list {
		created = created || (e.Key == "interop.evt.created" && e.Body.ID == 7)
		other = other || e.Body.ID == 8
	}
	ok := created && !other
	line, _ := json.Marshal(map[string]any{"check": "go-emit", "ok": ok, "detail": json.RawMessage(r.Body)})
	fmt.Println(string(line))
	if !ok {
		return fmt.Errorf("%s did not hear interop.evt.created (or heard interop.other.thing)", target)
	}
	return nil
}
