package qos_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

// The full wiring: the middleware on a router, the subscriber attached for
// back-pressure, Run beside the router.
func Example() {
	ctx := context.Background()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{Name: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: 100})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	reg := prometheus.NewRegistry() // served on /metrics with promhttp.HandlerFor
	limiter, err := qos.New(qos.Config{
		Prefetch:   100, // what the subscriber uses: restored after pressure
		Registerer: reg,
		Routes:     map[string]qos.RouteLimit{"billing.export": {MaxInFlight: 2}},
		OnPressure: func(tr qos.Transition) { log.Printf("QoS %v: %v", tr.To, tr.Reasons) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer limiter.Close()
	limiter.Attach(sub, "")

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	router.AddMiddleware(limiter.Middleware)
	router.AddConsumerHandler("billing.export", "q.requests.billing.export", sub,
		func(msg *message.Message) error { return nil })

	go func() { _ = limiter.Run(ctx) }()
	if err := router.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// A static limit on messages and payload bytes, without Run.
func ExampleLimiter_Middleware() {
	limiter, err := qos.New(qos.Config{Mode: qos.Static, MaxInFlight: 8, MaxBytesInFlight: 1 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer limiter.Close()
	h := limiter.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		n, b := limiter.InFlight()
		fmt.Printf("handling %s: %d message(s), %d bytes in flight\n", msg.UUID, n, b)
		return nil, nil
	})
	if _, err := h(message.NewMessage("m1", []byte(`{"amount":42}`))); err != nil {
		log.Fatal(err)
	}
	n, _ := limiter.InFlight()
	fmt.Println("limit:", limiter.Limit(), "state:", limiter.State(), "in flight after:", n)
	// Output:
	// handling m1: 1 message(s), 13 bytes in flight
	// limit: 8 state: normal in flight after: 0
}
