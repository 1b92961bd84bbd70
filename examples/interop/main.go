// Command interop is the Go side of the interoperability contract of
// ../../../shared/conformance (a stand-in for a Node micromessaging v3.2.9 peer).
//
//	interop serve  [-name SERVICE] [-url URL]   serve the contract's routes until SIGINT/SIGTERM
//	interop client [-target mmkit] [-url URL]   call a contract server (e.g. `conformance serve`)
//	                                            and check the answers; exit 1 on any failure
//
// serve prints one JSON line {"event":"ready",...} on stdout once every route is
// consumed, so scripts can wait for it; `conformance check -target SERVICE` then runs
// the Node client's checks against it. client prints one JSON line per check, like
// `conformance check`, then "interop client: N passed, M failed".
//
// The routes live in routes.go; other files of this package add theirs (tasks,
// events) by appending to setups from init().
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ThreeDotsLabs/watermill"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/patterns/tasks"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	url := fs.String("url", "", "RabbitMQ URI (default $RABBIT_URI, then amqp://guest:guest@127.0.0.1:5672/)")
	verbose := fs.Bool("v", false, "log the library's info messages to stderr")
	var err error
	switch os.Args[1] {
	case "serve":
		name := fs.String("name", "gointerop", "service name")
		fs.Parse(os.Args[2:])
		err = serve(*url, *name, logger(*verbose))
	case "client":
		target := fs.String("target", "mmkit", "service to check")
		fs.Parse(os.Args[2:])
		var failed int
		failed, err = client(*url, *target, logger(*verbose))
		if err == nil && failed > 0 {
			os.Exit(1)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: interop serve [-name SERVICE] | client [-target SERVICE]  [-url URL] [-v]")
	os.Exit(2)
}

func logger(verbose bool) watermill.LoggerAdapter {
	if verbose {
		return watermill.NewStdLoggerWithOut(os.Stderr, false, false)
	}
	return watermill.NopLogger{}
}

// serve runs the contract's routes as service name until SIGINT or SIGTERM.
func serve(url, name string, log watermill.LoggerAdapter) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	svc, err := router.New(name, router.Config{URL: url, Logger: log})
	if err != nil {
		return err
	}
	defer svc.Close()
	st := &State{}
	for _, setup := range setups {
		if err := setup(svc, st); err != nil {
			return err
		}
	}
	if err := svc.Connect(ctx); err != nil {
		return err
	}
	if err := waitLeader(ctx, svc); err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]any{"event": "ready", "service": name, "id": svc.ID(), "routes": st.Routes})
	fmt.Println(string(line))
	err = svc.Run(ctx)
	deleteQueues(url, name, st.Routes, st.TaskRoutes)
	return err
}

// deleteQueues deletes the queues the service leaves behind, when they are unused and
// empty, as a Node service's close(true) does, so test runs leave no queues behind (left
// alone, an unused request queue expires after 24 h: x-expires; the retry and dead
// queues of a task route never do). For a task route it deletes the empty retry and
// dead queues first, and the request queue only when no retry queue still holds a copy
// (which the broker would drop on its way back to a missing request queue). A queue in
// use or not empty is kept.
func deleteQueues(url, service string, routes, taskRoutes []string) {
	if url == "" {
		url = os.Getenv("RABBIT_URI")
	}
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop: delete queues:", err)
		return
	}
	defer conn.Close()
	// del deletes queue if empty (and unused with unused); false when it is kept. A
	// refusal closes the channel, so each delete gets a channel of its own.
	del := func(queue string, unused bool) bool {
		ch, err := conn.Channel()
		if err != nil {
			return false
		}
		defer ch.Close()
		_, err = ch.QueueDelete(queue, unused, true, false)
		return err == nil
	}
	keep := map[string]bool{}
	for _, route := range taskRoutes {
		for n := 1; n < tasks.DefaultMaxAttempts; n++ {
			if !del(tasks.RetryQueue(service, route, n), false) {
				keep[route] = true
			}
		}
		del(tasks.DeadQueue(service, route), false)
	}
	for _, route := range routes {
		if !keep[route] {
			del(wire.RequestQueue(service, route), true)
		}
	}
}
