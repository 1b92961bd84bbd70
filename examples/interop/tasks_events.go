package main

// The contract's task and event parts, on the facade's Task/Listen support
// (patterns/tasks and patterns/events underneath):
//
//   - work (task): counts and acks (st.Work, read by workCount), through HandleTask;
//   - events (RPC): the list of {key, body} heard on x.pubSub with binding interop.evt.*,
//     through Listen.

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/patterns/events"
	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

func init() { setups = append(setups, tasksAndEvents) }

// heardEvent is one event heard by the events route.
type heardEvent struct {
	Key  string          `json:"key"`
	Body json.RawMessage `json:"body"`
}

func tasksAndEvents(svc *router.Service, st *State) error {
	// work: a task route. A Node peer's task lands on q.requests.<service>.work.
	if err := svc.HandleTask("work", func(*message.Message) error {
		st.Work.Add(1)
		return nil
	}); err != nil {
		return err
	}
	st.Routes = append(st.Routes, "work")
	st.TaskRoutes = append(st.TaskRoutes, "work")

	// events: listen on interop.evt.* (a queue of this instance), answer the list.
	var mu sync.Mutex
	heard := []heardEvent{}
	if _, err := svc.Listen("interop", "evt.*", func(msg *message.Message) error {
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
