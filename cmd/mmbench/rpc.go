package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

// rpc: request/reply through the library, the twin of raw-rpc. A server Service answers
// route "echo" with the request body; a client Service (its own two connections) runs C
// concurrent callers, each doing sequential Requests of a SIZE-byte JSON body; 20
// untimed warm-up calls per caller, then n round trips in total; round trips/s and
// per-call p50/p99. Both Services use the facade's defaults (requests mandatory and
// unconfirmed, replies not confirmed, the route served by the request subscriber's
// workers, server prefetch 100 unless -prefetch).
// -opt cpuprofile=FILE writes a CPU profile of the whole process (both Services and the
// callers) during warm-up and the timed calls; -opt memprofile=FILE the allocations of
// the process at the end of the timed calls.

func init() {
	register("rpc", libRPC)
}

func libRPC(ctx context.Context, cfg config) (result, error) {
	name := "mmbench-rpc-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	server, err := router.New(name, router.Config{URL: cfg.url, Prefetch: cfg.prefetch})
	if err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, wire.RequestQueue(name, "echo"))
	defer server.Close()
	if err := server.Handle("echo", func(ctx context.Context, req *rpc.Request) (any, error) {
		return req.Body, nil
	}); err != nil {
		return result{}, err
	}
	if err := server.Connect(ctx); err != nil {
		return result{}, fmt.Errorf("server: %w", err)
	}
	client, err := router.New(name+"-client", router.Config{URL: cfg.url})
	if err != nil {
		return result{}, err
	}
	defer client.Close()
	if err := client.Connect(ctx); err != nil {
		return result{}, fmt.Errorf("client: %w", err)
	}

	if path := cfg.extra["cpuprofile"]; path != "" {
		f, err := os.Create(path)
		if err != nil {
			return result{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return result{}, err
		}
		defer pprof.StopCPUProfile()
	}
	body := json.RawMessage(payload(cfg.size))
	elapsed, lats, err := measureCalls(ctx, cfg.c, cfg.n, rpcWarmup, func(ctx context.Context) error {
		r, err := client.Request(ctx, name, "echo", body, rpc.WithTimeout(rpcCallTimeout))
		if err != nil {
			return err
		}
		if len(r.Body) != len(body) {
			return fmt.Errorf("reply of %d bytes, want %d", len(r.Body), len(body))
		}
		return nil
	})
	if err != nil {
		return result{}, err
	}
	if path := cfg.extra["memprofile"]; path != "" {
		f, err := os.Create(path)
		if err != nil {
			return result{}, err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return result{}, err
		}
	}
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	return result{
		Seconds: elapsed.Seconds(),
		P50us:   percentile(lats, 50),
		P99us:   percentile(lats, 99),
		Opts: fmt.Sprintf("router.Service on each side (2 connections each), requests mandatory, unconfirmed (returns fail the call), "+
			"replies unconfirmed, reply queue no-ack, route served by the request subscriber's workers (Subscriber.Handle), server prefetch=%d, %d warm-up calls/caller", prefetch, rpcWarmup),
	}, nil
}
