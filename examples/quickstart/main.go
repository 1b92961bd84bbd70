// Command quickstart: the service "server" answers the route "request-name", and the
// service "client" asks it how it is (broker at $RABBIT_URI, default
// amqp://guest:guest@127.0.0.1:5672/). Both run in this one program.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	server, err1 := router.New("server", router.Config{})
	client, err2 := router.New("client", router.Config{})
	if err := errors.Join(err1, err2); err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	defer client.Close()

	server.Handle("request-name", func(ctx context.Context, req *rpc.Request) (any, error) {
		return map[string]string{"im": "fine"}, nil
	})
	if err := errors.Join(server.Connect(ctx), client.Connect(ctx)); err != nil {
		log.Fatal(err)
	}

	reply, err := client.Request(ctx, "server", "request-name", map[string]any{"how": map[string]string{"are": "you?"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply.Body)) // {"im":"fine"}
}
