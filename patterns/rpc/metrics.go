package rpc

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a call or of a served request: the values of the "outcome" label.
const (
	OutcomeOK         = "ok"         // a reply (or a stream's end) arrived / was sent
	OutcomeError      = "error"      // a remote error came back / the handler failed; or a local failure
	OutcomeTimeout    = "timeout"    // client: no reply in time
	OutcomeUnroutable = "unroutable" // client: nobody serves the route
	OutcomeCanceled   = "canceled"   // client: the ctx was cancelled, the iteration stopped, or the client closed
	OutcomeExpired    = "expired"    // server: the request's deadline passed before it ran or before its reply
)

// latencyBuckets spans a fast local round trip (~100 µs) to the default timeout (120 s).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

type clientMetrics struct {
	requests *prometheus.CounterVec   // route, outcome
	latency  *prometheus.HistogramVec // route
	inFlight prometheus.Gauge
	dropped  prometheus.Counter
}

func newClientMetrics(reg prometheus.Registerer) (*clientMetrics, error) {
	r := &registry{reg: reg}
	m := &clientMetrics{
		requests: register(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "rpc_client", Name: "requests_total",
			Help: "Requests made, by route and outcome (ok, error, timeout, unroutable, canceled).",
		}, []string{"route", "outcome"})),
		latency: register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "micromessaging", Subsystem: "rpc_client", Name: "request_duration_seconds",
			Help:    "Time from sending a request to its final reply (or failure), by route.",
			Buckets: latencyBuckets,
		}, []string{"route"})),
		inFlight: register(r, prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "micromessaging", Subsystem: "rpc_client", Name: "in_flight_requests",
			Help: "Requests waiting for their reply.",
		})),
		dropped: register(r, prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "rpc_client", Name: "dropped_replies_total",
			Help: "Replies dropped because no call waits for their correlation id (late, after a timeout or cancel, or unknown).",
		})),
	}
	return m, r.err
}

type serverMetrics struct {
	requests *prometheus.CounterVec   // route, outcome
	latency  *prometheus.HistogramVec // route
	inFlight prometheus.Gauge
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	r := &registry{reg: reg}
	m := &serverMetrics{
		requests: register(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "rpc_server", Name: "requests_total",
			Help: "Requests received, by route and outcome (ok, error, expired).",
		}, []string{"route", "outcome"})),
		latency: register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "micromessaging", Subsystem: "rpc_server", Name: "request_duration_seconds",
			Help:    "Time from receiving a request to sending its final reply, by route.",
			Buckets: latencyBuckets,
		}, []string{"route"})),
		inFlight: register(r, prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "micromessaging", Subsystem: "rpc_server", Name: "in_flight_requests",
			Help: "Requests whose handler is running.",
		})),
	}
	return m, r.err
}

// registry registers collectors on reg (nil: registers nothing) and remembers the
// first error.
type registry struct {
	reg prometheus.Registerer
	err error
}

// register registers c and returns it, or the collector already registered under the
// same description (so two clients or servers can share a registry).
func register[C prometheus.Collector](r *registry, c C) C {
	if r.reg == nil {
		return c
	}
	if err := r.reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		r.err = errors.Join(r.err, err)
	}
	return c
}
