// Command client is the client half of the RPC example: it calls the "calculator"
// service of ../server (start it first) and prints the answers: a reply, a coded error,
// and a stream.
//
//	go run ./examples/rpc/client   # broker at $RABBIT_URI
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
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := router.New("calculator-client", router.Config{})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return err
	}

	// A reply.
	reply, err := svc.Request(ctx, "calculator", "add", map[string]float64{"a": 2, "b": 3}, rpc.WithTimeout(5*time.Second))
	if errors.Is(err, rpc.ErrUnroutable) {
		return errors.New("nobody serves calculator.add: start examples/rpc/server first")
	}
	if err != nil {
		return err
	}
	var sum struct{ Sum float64 }
	if err := reply.Decode(&sum); err != nil {
		return err
	}
	fmt.Println("2 + 3 =", sum.Sum)

	// A coded error.
	_, err = svc.Request(ctx, "calculator", "divide", map[string]float64{"a": 1, "b": 0})
	var re *rpc.RemoteError
	if !errors.As(err, &re) {
		return fmt.Errorf("divide: want a remote error, got %v", err)
	}
	fmt.Printf("1 / 0: %s (code %d, %s, info %v)\n", re.Message, re.Code, re.CodeString, re.Info)

	// A stream: chunks in order, then the end message.
	fmt.Print("count:")
	for r, err := range svc.Stream(ctx, "calculator", "count", map[string]int{"n": 5}, rpc.WithTimeout(time.Second)) {
		if err != nil {
			return err
		}
		fmt.Print(" ", string(r.Body))
	}
	fmt.Println()
	return nil
}
