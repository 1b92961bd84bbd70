package rpc_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// Both halves of RPC on a Watermill router you own and run: the server's route and the
// client's reply queue are ordinary router handlers. (The router package does this
// wiring for you.)
func Example_ownRouter() {
	ctx := context.Background()
	conn, _ := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{}) // $RABBIT_URI
	if err := conn.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Requests: mandatory and confirmed, so a route nobody serves fails at once.
	requests, _ := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Mandatory: true})
	// Replies: the default exchange, not mandatory.
	replies, _ := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoConfirm: true})
	// Request queues as every micromessaging peer declares them.
	requestSub, _ := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
	})
	// The reply queue: exclusive, consumed without acks.
	replySub, _ := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Queue:     func(topic string) rabbitmq.Queue { return rabbitmq.Queue{Name: topic, Exclusive: true} },
		NoAck:     true,
		Exclusive: true,
	})

	router, _ := message.NewRouter(message.RouterConfig{}, nil)

	server, _ := rpc.NewServer(rpc.ServerConfig{Service: "math", Publisher: replies})
	server.AddHandler(router, requestSub, "double", func(ctx context.Context, req *rpc.Request) (any, error) {
		var n int
		if err := req.Decode(&n); err != nil {
			return nil, err
		}
		return 2 * n, nil
	})

	client, _ := rpc.NewClient(rpc.ClientConfig{Service: "math-client", Publisher: requests})
	client.AddHandler(router, replySub)

	go router.Run(ctx)
	defer router.Close()
	<-router.Running()

	reply, err := client.Request(ctx, "math", "double", 21)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply.Body)) // 42
}
