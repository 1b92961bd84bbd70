package main

// The contract's task and event parts, served with patterns/tasks and patterns/events:
//
//   - work (task): counts and acks (st.Work, read by workCount), through a tasks.Worker;
//   - events (RPC): the list of {key, body} heard on x.pubSub with binding interop.evt.*,
//     through an events.Bus listen.
//
// Until the router facade has Emit/Listen/Task, this file builds the transport for
// them itself: one connection of its own, a confirming mandatory publisher (the
// worker's retry and dead-letter copies), a subscriber for the request queue (declared
// as Node does) and one for the listen queue, all running on the facade's Watermill
// router (svc.Router()), which starts them when the Service connects.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func init() { setups = append(setups, tasksAndEvents) }

// heardEvent is one event heard by the events route.
type heardEvent struct {
	Key  string          `json:"key"`
	Body json.RawMessage `json:"body"`
}

func tasksAndEvents(svc *router.Service, st *State) error {
	service := svc.Name()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: urlFromArgs(), Name: "interop " + service + " tasks+events"})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		return err
	}
	// The process ends with serve; the connection closes with it.

	// work: a task route. A Node peer's task lands on q.requests.<service>.work.
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Mandatory: true})
	if err != nil {
		return err
	}
	requestSub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
	})
	if err != nil {
		return err
	}
	worker, err := tasks.NewWorker(tasks.WorkerConfig{Service: service, Publisher: pub, Channels: conn})
	if err != nil {
		return err
	}
	svc.Router().AddConsumerHandler("tasks.work", worker.Topic("work"), requestSub,
		worker.Handler("work", func(*message.Message) error {
			st.Work.Add(1)
			return nil
		}))
	st.Routes = append(st.Routes, "work")

	// events: listen on interop.evt.* (a queue of this instance), answer the list.
	var bus *events.Bus
	x := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	listenSub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{x},
		Queue: func(topic string) rabbitmq.Queue {
			q, _ := bus.Queue(topic)
			return rabbitmq.Queue{Name: q.Name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete,
				Bindings: []rabbitmq.Binding{{Exchange: q.Exchange, Key: q.Key}}}
		},
	})
	if err != nil {
		return err
	}
	if bus, err = events.New(events.Config{Service: service, Subscriber: listenSub, Router: svc.Router()}); err != nil {
		return err
	}
	var mu sync.Mutex
	heard := []heardEvent{}
	if _, err := bus.Listen("interop", "evt.*", func(msg *message.Message) error {
		if !json.Valid(msg.Payload) {
			return fmt.Errorf("event %s: body is not JSON", events.RoutingKey(msg))
		}
		mu.Lock()
		heard = append(heard, heardEvent{Key: events.RoutingKey(msg), Body: json.RawMessage(msg.Payload)})
		mu.Unlock()
		return nil
	}); err != nil {
		return err
	}
	return handle(svc, st, "events", func(ctx context.Context, req *rpc.Request) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]heardEvent{}, heard...), nil
	})
}

// urlFromArgs returns serve's -url flag ("" when absent: the transport then uses
// $RABBIT_URI or the local broker). State does not carry the URL.
func urlFromArgs() string {
	args := os.Args[1:]
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "url" {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
