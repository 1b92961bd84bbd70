// Command qos runs a service whose task handler works through a queue behind the QoS
// limiter that every router.Service has by default (package middleware/qos; the
// Service attaches it to its request subscriber for back-pressure), logs its pressure
// and release transitions, and serves Prometheus metrics (micromessaging_qos_*, the
// Service's rabbitmq and rpc metrics, Go runtime) on a loopback address until SIGINT.
//
//	go run ./examples/qos -metrics 127.0.0.1:9464 -publish 5000 -work 20ms -hold-mb 2
//	curl -s 127.0.0.1:9464/metrics | grep micromessaging_qos_
//
// -publish sends that many tasks to the service's route "work" at start so that there
// is something to limit; each task holds -hold-mb MiB for -work. Run it with GOMEMLIMIT
// set (for example GOMEMLIMIT=200MiB) to watch the limiter shrink, stop intake (the
// tasks wait in q.requests.<service>.work) and resume.
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
	"golang.org/x/sync/errgroup"

	"github.com/micromessaging/micromessaging/middleware/qos"
	"github.com/micromessaging/micromessaging/router"
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
		service     = flag.String("service", "qos-example", "service name (tasks go to q.requests.<service>.work)")
		prefetch    = flag.Int("prefetch", 100, "request subscriber prefetch")
		publish     = flag.Int("publish", 0, "tasks to send at start")
		work        = flag.Duration("work", 10*time.Millisecond, "time each task takes")
		holdMB      = flag.Int("hold-mb", 0, "MiB each task holds while it is handled")
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

	svc, err := router.New(*service, router.Config{
		URL: *url, Prefetch: *prefetch, Registerer: reg, Logger: logger,
		// The zero qos.Config is the default adaptive limiter; only the hooks are set.
		QoS: qos.Config{
			OnPressure: func(tr qos.Transition) {
				slog.Warn("under pressure", "state", tr.To.String(), "reasons", tr.Reasons.String(), "limit", tr.Limit)
			},
			OnRelease: func(tr qos.Transition) {
				slog.Info("pressure released", "state", tr.To.String(), "limit", tr.Limit)
			},
		},
	})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.HandleTask("work", func(msg *message.Message) error {
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
		runtime.KeepAlive(b) // held until the task is done
		return nil
	}); err != nil {
		return err
	}
	if err := svc.Connect(ctx); err != nil { // the route's queue exists once this returns
		return err
	}

	srv := &http.Server{
		Addr:              *metricsAddr,
		Handler:           promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error { return fill(gctx, svc, *publish) })
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

// fill sends n tasks to the service's own route "work", 16 at a time (each Task waits
// for the broker's confirm).
func fill(ctx context.Context, svc *router.Service, n int) error {
	if n <= 0 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			return svc.Task(gctx, svc.Name(), "work", map[string]int{"i": i}, nil)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("send tasks: %w", err)
	}
	slog.Info("tasks sent", "service", svc.Name(), "route", "work", "tasks", n)
	return nil
}
