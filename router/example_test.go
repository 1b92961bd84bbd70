package router_test

import (
	"context"
	"fmt"
	"log"

	"github.com/micromessaging/micromessaging/middleware/qos"
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

// QoS is on by default; Config.QoS tunes it and Config.DisableQoS turns it off.
func Example_qos() {
	svc, err := router.New("worker", router.Config{
		QoS: qos.Config{
			MaxInFlight: 200,                                                   // adaptive ceiling (default 1000)
			Routes:      map[string]qos.RouteLimit{"resize": {MaxInFlight: 4}}, // route "resize": 4 at once
			OnPressure:  func(tr qos.Transition) { log.Printf("pressure: %v (%v)", tr.To, tr.Reasons) },
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Close()
	log.Printf("QoS state %v, limit %d", svc.QoS().State(), svc.QoS().Limit())

	plain, err := router.New("plain", router.Config{DisableQoS: true}) // svc.QoS() == nil
	if err != nil {
		log.Fatal(err)
	}
	defer plain.Close()
}
