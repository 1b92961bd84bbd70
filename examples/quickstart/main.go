// Command quickstart is the micromessaging quickstart: the service "server" answers the
// route "request-name", and the service "client" asks it. Both run in this one program,
// against the broker at $RABBIT_URI (default amqp://guest:guest@127.0.0.1:5672/).
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The server: answers "request-name".
	server, err := router.New("server", router.Config{})
	if err != nil {
		return err
	}
	defer server.Close()
	err = server.Handle("request-name", func(ctx context.Context, req *rpc.Request) (any, error) {
		var question struct {
			How struct{ Are string } `json:"how"`
		}
		if err := req.Decode(&question); err != nil {
			return nil, err // the caller gets a *rpc.RemoteError with code 400
		}
		return map[string]string{"im": "fine"}, nil
	})
	if err != nil {
		return err
	}
	if err := server.Connect(ctx); err != nil {
		return err
	}

	// The client: asks "server" how it is.
	client, err := router.New("client", router.Config{})
	if err != nil {
		return err
	}
	defer client.Close()
	if err := client.Connect(ctx); err != nil {
		return err
	}
	reply, err := client.Request(ctx, "server", "request-name", map[string]any{"how": map[string]string{"are": "you?"}})
	if err != nil {
		return err
	}
	fmt.Println(string(reply.Body)) // {"im":"fine"}
	return nil
}
