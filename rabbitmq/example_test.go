package rabbitmq_test

import (
	"context"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

// A task queue consumed by a Watermill router, and a publisher feeding it. Publishing and
// consuming use separate connections.
func Example() {
	ctx := context.Background()
	logger := watermill.NewSlogLogger(nil)

	pubConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{Name: "billing-publish", Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	subConn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{Name: "billing-consume", Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range []*rabbitmq.Connection{pubConn, subConn} {
		if err := c.Connect(ctx); err != nil { // a wrong URL or password fails here
			log.Fatal(err)
		}
		defer c.Close()
	}

	queue := wire.RequestQueue("billing", "charge")
	sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: topic, Durable: true, Args: wire.RequestQueueArgs()}
		},
		Prefetch:  50,
		NackDelay: time.Second,
		Logger:    logger,
	})
	if err != nil {
		log.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		log.Fatal(err)
	}
	router.AddConsumerHandler("charge", queue, sub, func(msg *message.Message) error {
		log.Printf("charge %s: %s", msg.UUID, msg.Payload)
		return nil // acked; an error nacks (requeued after NackDelay)
	})
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{
		Mandatory: true, Marshaler: wire.Codec{Persistent: true}, Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	// Returns once the broker confirmed it; ErrUnroutable if no queue is bound.
	if err := pub.Publish(queue, message.NewMessage(watermill.NewUUID(), []byte(`{"amount":42}`))); err != nil {
		log.Fatal(err)
	}
	_ = router.Close()
}
