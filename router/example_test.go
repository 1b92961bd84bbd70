package router_test

import (
	"context"
	"fmt"
	"log"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
)

// The Go version of the Node library's README example: the service "server" answers
// "request-name", and another service asks it.
func Example() {
	ctx := context.Background()

	server, err := router.New("server", router.Config{}) // broker at $RABBIT_URI
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	server.Handle("request-name", func(ctx context.Context, req *rpc.Request) (any, error) {
		return map[string]string{"im": "fine"}, nil
	})
	if err := server.Connect(ctx); err != nil {
		log.Fatal(err)
	}

	client, err := router.New("client", router.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if err := client.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	reply, err := client.Request(ctx, "server", "request-name", map[string]any{"how": map[string]string{"are": "you?"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply.Body)) // {"im":"fine"}
}
