package peerstatus

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Tracker's Prometheus collectors. Label values come from closed sets:
// service is the configured service name, state and event are enums.
type metrics struct {
	peers      *prometheus.GaugeVec   // service, state (alive|suspect); the own instance counts as alive
	heartbeats *prometheus.CounterVec // service, event (sent|send_failed|received|malformed)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "micromessaging", Name: "peers",
			Help: "Members of the service as this instance sees them (itself included), by state.",
		}, []string{"service", "state"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Name: "peer_heartbeats_total",
			Help: "Heartbeats sent, failed to send, received and rejected as malformed.",
		}, []string{"service", "event"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.peers, err = register(reg, m.peers)
	if err != nil {
		return nil, err
	}
	m.heartbeats, err = register(reg, m.heartbeats)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under its name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
