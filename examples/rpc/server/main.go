// Command server is the server half of the RPC example: the service "calculator"
// answers "add" ({"a","b"} -> {"sum"}), "divide" (a coded error on division by zero) and
// "count" (a stream of n numbers), until SIGINT or SIGTERM. Run several: they share the
// requests. The client is ../client.
//
//	go run ./examples/rpc/server   # broker at $RABBIT_URI
package main

import (
	"context"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

type operands struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	svc, err := router.New("calculator", router.Config{Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	must(svc.Handle("add", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in operands
		if err := req.Decode(&in); err != nil {
			return nil, err // code 400 for the caller
		}
		return map[string]float64{"sum": in.A + in.B}, nil
	}))
	must(svc.Handle("divide", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in operands
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		if in.B == 0 {
			return nil, &rpc.RemoteError{Message: "division by zero", CodeString: "badRequest", Code: 400,
				Info: map[string]float64{"a": in.A}}
		}
		return map[string]float64{"quotient": in.A / in.B}, nil
	}))
	must(svc.Handle("count", func(ctx context.Context, req *rpc.Request) (any, error) {
		var in struct{ N int }
		if err := req.Decode(&in); err != nil {
			return nil, err
		}
		for i := 1; i <= in.N; i++ {
			if err := req.Write(i); err != nil {
				return nil, err
			}
			time.Sleep(100 * time.Millisecond) // each chunk re-arms the caller's timeout
		}
		return "done", nil
	}))
	log.Printf("calculator %s serving add, divide, count", svc.ID())
	if err := svc.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
