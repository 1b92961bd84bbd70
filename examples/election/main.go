// Command election runs one instance of a service's leader election and a leader-only
// job: start several (and Node instances, or `conformance elect` stand-ins, of the same
// service) and exactly one of them runs the job; kill it and another takes over.
//
//	go run ./examples/election [-service mmelection] [-url URL] [-heartbeat 1s] [-retry 500ms] [-job 1s] [-v]
//
// It prints one JSON line on stdout when it joined, {"event":"joined","self","at"}, and
// one each time the leader it knows changes, {"event":"leader","self","leader","term",
// "at"} (at = ms since the epoch), like `conformance elect`, so scripts can compare
// both; the job logs to stderr. SIGINT or SIGTERM stops it cleanly: a leader releases
// the lock and announces it, and a Go follower takes over at once.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/election"
	"github.com/micromessaging/micromessaging/peerstatus"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/wire"
)

func main() {
	service := flag.String("service", "mmelection", "service whose election to join")
	url := flag.String("url", "", "RabbitMQ URI (default $RABBIT_URI, then amqp://guest:guest@127.0.0.1:5672/)")
	heartbeat := flag.Duration("heartbeat", time.Second, "heartbeat period (Node beats every 10s)")
	retry := flag.Duration("retry", 500*time.Millisecond, "how often a follower tries the lock")
	job := flag.Duration("job", time.Second, "period of the leader-only job")
	verbose := flag.Bool("v", false, "log the library's info messages to stderr")
	flag.Parse()
	if err := run(*url, *service, *heartbeat, *retry, *job, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "election:", err)
		os.Exit(1)
	}
}

func run(url, service string, heartbeat, retry, job time.Duration, verbose bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := watermill.LoggerAdapter(watermill.NopLogger{})
	if verbose {
		logger = watermill.NewStdLoggerWithOut(os.Stderr, false, false)
	}
	id := uuid.NewString()

	// One connection: it holds the lock, so the lock goes when the process goes.
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: url, Name: "election " + service + " " + id[:8], Logger: logger})
	if err != nil {
		return err
	}
	if err := conn.Connect(ctx); err != nil {
		return err
	}
	defer conn.Close()

	// Heartbeats are events on x.pubSub; each Subscribe gets an exclusive, auto-delete
	// queue of its own, consumed without acks (as Node does for internal traffic).
	pubSub := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &pubSub, Logger: logger})
	if err != nil {
		return err
	}
	defer pub.Close()
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{pubSub}, NoAck: true, Logger: logger,
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: wire.ListenQueue(service, uuid.NewString()), Exclusive: true, AutoDelete: true,
				Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
		},
	})
	if err != nil {
		return err
	}
	defer sub.Close()

	tracker, err := peerstatus.New(peerstatus.Config{
		Service: service, InstanceID: id, Publisher: pub, Subscriber: sub, Interval: heartbeat, Logger: logger,
	})
	if err != nil {
		return err
	}

	// The leader-only job runs under the context of its leadership: it stops the moment
	// this instance stops leading. The hook starts it; jobs is joined before exit.
	var jobs sync.WaitGroup
	el, err := election.New(election.Config{
		Tracker: tracker, Locker: conn, RetryInterval: retry, Logger: logger,
		OnStepUp: func(up election.StepUp) {
			jobs.Add(1)
			go func() {
				defer jobs.Done()
				leaderJob(up.Context, up.Term, job)
			}()
		},
		OnStepDown: func(down election.StepDown) {
			log.Printf("stepped down (term %d, %s)", down.Term, down.Reason)
		},
	})
	if err != nil {
		return err
	}

	emit := func(v map[string]any) {
		v["at"] = time.Now().UnixMilli()
		line, _ := json.Marshal(v)
		fmt.Println(string(line))
	}
	// Both run until closed (not until the signal): at shutdown the elector must stop
	// before the tracker, so that the step-down goes out before the goodbye.
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(3)
	go func() { defer wg.Done(); errs <- tracker.Run(context.Background()) }()
	go func() { defer wg.Done(); errs <- el.Run(context.Background()) }()
	go func() {
		defer wg.Done()
		last := ""
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-el.Changes():
				if s.LeaderID != "" && s.LeaderID != last {
					last = s.LeaderID
					emit(map[string]any{"event": "leader", "self": id, "leader": s.LeaderID, "term": s.Term})
				}
			}
		}
	}()
	emit(map[string]any{"event": "joined", "self": id})

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs: // Run fails only when its subscriptions fail
		stop()
	}
	// Elector first: a leader releases the lock and announces it with a heartbeat;
	// then the tracker says goodbye.
	el.Close()
	tracker.Close()
	wg.Wait()
	jobs.Wait()
	return runErr
}

// leaderJob is the work only the leader does; term fences it (a store could refuse
// writes from an older term).
func leaderJob(ctx context.Context, term uint64, every time.Duration) {
	log.Printf("leading in term %d: job started", term)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			log.Printf("term %d over: job stopped after %d runs", term, n-1)
			return
		case <-tick.C:
			log.Printf("leader job run %d (term %d)", n, term)
		}
	}
}
