package election

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Elector's Prometheus collectors; service is the configured service
// name and outcome an enum.
type metrics struct {
	isLeader *prometheus.GaugeVec   // service
	changes  *prometheus.CounterVec // service
	term     *prometheus.GaugeVec   // service
	attempts *prometheus.CounterVec // service, outcome (acquired|held|failed)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		isLeader: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "micromessaging", Subsystem: "election", Name: "is_leader",
			Help: "1 while this instance leads the service, else 0.",
		}, []string{"service"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "election", Name: "leader_changes_total",
			Help: "Times this instance learned of a leader (itself included) other than the one it knew just before; the same leader known again after a time without one counts again.",
		}, []string{"service"}),
		term: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "micromessaging", Subsystem: "election", Name: "term",
			Help: "Leadership term known to this instance (0 while none is known or the leader sends none).",
		}, []string{"service"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "election", Name: "lock_attempts_total",
			Help: "Attempts to take the election lock, by outcome (acquired, held by another instance, failed).",
		}, []string{"service", "outcome"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.isLeader, err = register(reg, m.isLeader); err != nil {
		return nil, err
	}
	if m.changes, err = register(reg, m.changes); err != nil {
		return nil, err
	}
	if m.term, err = register(reg, m.term); err != nil {
		return nil, err
	}
	if m.attempts, err = register(reg, m.attempts); err != nil {
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
