package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

// State is what the contract's routes share: the task count of `work` (read by
// `workCount`). Files that need more shared state keep it in variables of their own.
type State struct {
	Work       atomic.Int64
	Routes     []string // registered routes (RPC and task), for the ready line
	TaskRoutes []string // the task routes among them, whose retry and dead queues serve deletes at exit
}

// setups register routes and listens on the service before it connects. Files of this
// package append theirs from init(): tasks (`work`) and events (`events` and the listen
// on interop.evt.*) land with the events/tasks work.
var setups []func(svc *router.Service, st *State) error

func init() { setups = append(setups, rpcRoutes) }

// handle registers route and records it in st.
func handle(svc *router.Service, st *State, route string, h rpc.Handler) error {
	st.Routes = append(st.Routes, route)
	return svc.Handle(route, h)
}

// rpcRoutes registers the request/reply routes of the contract.
func rpcRoutes(svc *router.Service, st *State) error {
	// echo: replies with the request body.
	if err := handle(svc, st, "echo", func(ctx context.Context, req *rpc.Request) (any, error) {
		return req.Body, nil
	}); err != nil {
		return err
	}
	// fail: a coded error.
	if err := handle(svc, st, "fail", func(ctx context.Context, req *rpc.Request) (any, error) {
		return nil, &rpc.RemoteError{Message: "failed on purpose", CodeString: "boom", Code: 418,
			Info: map[string]int{"x": 1}, Level: "fatal"}
	}); err != nil {
		return err
	}
	// stream {n}: n chunks {i}, then the end {done:true}.
	if err := handle(svc, st, "stream", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in struct{ N int }
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		for i := range in.N {
			if err := req.Write(map[string]int{"i": i}); err != nil {
				return nil, err
			}
		}
		return map[string]bool{"done": true}, nil
	}); err != nil {
		return err
	}
	// slow {ms}: replies {slept: ms} after ms. An expired request is dropped by the
	// library, and its late reply is not sent.
	if err := handle(svc, st, "slow", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in struct{ Ms int }
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		select {
		case <-time.After(time.Duration(in.Ms) * time.Millisecond):
			return map[string]int{"slept": in.Ms}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}); err != nil {
		return err
	}
	// workCount: how many `work` tasks were handled.
	return handle(svc, st, "workCount", func(ctx context.Context, req *rpc.Request) (any, error) {
		return map[string]int64{"count": st.Work.Load()}, nil
	})
}
