// Command qos runs a Watermill router whose handler consumes a RabbitMQ queue behind the
// QoS middleware (middleware/qos), with the limiter attached to the subscriber for
// back-pressure, and serves Prometheus metrics (micromessaging_qos_*, Go runtime) on a
// loopback address until SIGINT.
//
//	go run ./examples/qos -metrics 127.0.0.1:9464 -publish 5000 -work 20ms -hold-mb 2
//	curl -s 127.0.0.1:9464/metrics | grep micromessaging_qos_
//
// -publish puts messages in the queue at start so that there is something to limit;
// each message holds -hold-mb MiB for -work. Run it with GOMEMLIMIT set (for example
// GOMEMLIMIT=200MiB) to watch the limiter shrink, stop intake and resume.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "qos example:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		metricsAddr = flag.String("metrics", "127.0.0.1:9464", "loopback address for /metrics")
		url         = flag.String("url", "", "AMQP URL (default $RABBIT_URI or the local broker)")
		queue       = flag.String("queue", "qos-example", "queue to consume (durable, declared if missing)")
		prefetch    = flag.Int("prefetch", 100, "subscriber prefetch")
		publish     = flag.Int("publish", 0, "messages to put in the queue at start")
		work        = flag.Duration("work", 10*time.Millisecond, "time each message takes")
		holdMB      = flag.Int("hold-mb", 0, "MiB each message holds while it is handled")
	)
	flag.Parse()
	if err := loopback(*metricsAddr); err != nil {
		return err
	}
	logger := watermill.NewSlogLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: *url, Name: "qos-example", Logger: logger, Registerer: reg})
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.Connect(ctx); err != nil {
		return err
	}
	if *publish > 0 {
		if err := fill(ctx, conn, *queue, *publish); err != nil {
			return err
		}
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Prefetch: *prefetch, Logger: logger, Registerer: reg})
	if err != nil {
		return err
	}
	defer sub.Close()

	limiter, err := qos.New(qos.Config{
		Prefetch:   *prefetch,
		Registerer: reg,
		Logger:     logger,
		OnPressure: func(tr qos.Transition) {
			slog.Warn("under pressure", "state", tr.To.String(), "reasons", tr.Reasons.String(), "limit", tr.Limit)
		},
		OnRelease: func(tr qos.Transition) {
			slog.Info("pressure released", "state", tr.To.String(), "limit", tr.Limit)
		},
	})
	if err != nil {
		return err
	}
	defer limiter.Close()
	limiter.Attach(sub, "")

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return err
	}
	router.AddMiddleware(limiter.Middleware)
	router.AddConsumerHandler("work", *queue, sub, func(msg *message.Message) error {
		var b []byte
		if *holdMB > 0 {
			b = make([]byte, *holdMB<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
		}
		select {
		case <-time.After(*work):
		case <-msg.Context().Done():
			return msg.Context().Err()
		}
		runtime.KeepAlive(b) // held until the message is done
		return nil
	})

	srv := &http.Server{
		Addr:              *metricsAddr,
		Handler:           promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return limiter.Run(gctx) })
	g.Go(func() error { return router.Run(gctx) })
	g.Go(func() error {
		slog.Info("serving metrics", "url", "http://"+*metricsAddr+"/metrics")
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// loopback refuses addresses other programs on the network could reach.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-metrics %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-metrics %q: want a loopback address such as 127.0.0.1:9464", addr)
	}
	return nil
}

// fill declares the queue and publishes n small messages on a raw channel of conn.
func fill(ctx context.Context, conn *rabbitmq.Connection, queue string, n int) error {
	ch, err := conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{
			ContentType: "application/json", Body: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Headers: amqp.Table{"__mms": amqp.Table{}},
		})
		if err != nil {
			return err
		}
		if i == n-1 {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("publish not confirmed: %v", err)
			}
		}
	}
	slog.Info("queue filled", "queue", queue, "messages", n)
	return nil
}
