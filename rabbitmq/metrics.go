package rabbitmq

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	metricsNamespace = "micromessaging"
	metricsSubsystem = "rabbitmq"
)

// registerCounterVec creates a counter vector and registers it on reg (nil: not
// registered). When an identical collector is already registered (a second Connection,
// Publisher or Subscriber on the same registry), the registered one is reused.
func registerCounterVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help,
	}, labels)
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		// A conflicting collector of another type or shape: keep an unregistered one
		// rather than fail the component over its metrics.
	}
	return c
}

func registerGaugeVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help,
	}, labels)
	if reg == nil {
		return g
	}
	if err := reg.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.GaugeVec); ok {
				return existing
			}
		}
	}
	return g
}

// connMetrics are the per-Connection series, labelled connection=<ConnectionConfig.Name>.
type connMetrics struct {
	state      prometheus.Gauge
	reconnects prometheus.Counter
	blocked    prometheus.Gauge
}

func newConnMetrics(reg prometheus.Registerer, name string) connMetrics {
	return connMetrics{
		state: registerGaugeVec(reg, "connection_state",
			"State of the connection: 0 disconnected, 1 connecting, 2 connected, 3 closed.",
			"connection").WithLabelValues(name),
		reconnects: registerCounterVec(reg, "reconnects_total",
			"Successful reconnects after the connection was lost.",
			"connection").WithLabelValues(name),
		blocked: registerGaugeVec(reg, "connection_blocked",
			"1 while the broker blocks publishing on the connection (connection.blocked, e.g. a memory or disk alarm).",
			"connection").WithLabelValues(name),
	}
}

// pubMetrics are the per-Publisher series, labelled publisher=<PublisherConfig.Name>.
type pubMetrics struct {
	published prometheus.Counter
	confirmed prometheus.Counter
	returned  prometheus.Counter
	nacked    prometheus.Counter
	retried   prometheus.Counter
}

func newPubMetrics(reg prometheus.Registerer, name string) pubMetrics {
	return pubMetrics{
		published: registerCounterVec(reg, "published_total",
			"Messages written to the broker (each attempt).", "publisher").WithLabelValues(name),
		confirmed: registerCounterVec(reg, "confirmed_total",
			"Publishes the broker confirmed (basic.ack).", "publisher").WithLabelValues(name),
		returned: registerCounterVec(reg, "returned_total",
			"Mandatory publishes the broker returned as unroutable (basic.return).", "publisher").WithLabelValues(name),
		nacked: registerCounterVec(reg, "publish_nacked_total",
			"Publishes the broker refused (basic.nack).", "publisher").WithLabelValues(name),
		retried: registerCounterVec(reg, "publish_retried_total",
			"Publishes sent again because their channel or connection died before the confirm.", "publisher").WithLabelValues(name),
	}
}

// subMetrics are the per-Subscriber series, labelled subscriber=<SubscriberConfig.Name>.
type subMetrics struct {
	deliveries  prometheus.Counter
	undecodable prometheus.Counter
	acked       prometheus.Counter
	nacked      prometheus.Counter
}

func newSubMetrics(reg prometheus.Registerer, name string) subMetrics {
	return subMetrics{
		deliveries: registerCounterVec(reg, "deliveries_total",
			"Messages received from the broker.", "subscriber").WithLabelValues(name),
		undecodable: registerCounterVec(reg, "undecodable_total",
			"Deliveries the Marshaler could not decode; rejected without requeue (dead-lettered if the queue has a dead-letter exchange).",
			"subscriber").WithLabelValues(name),
		acked: registerCounterVec(reg, "acked_total",
			"Messages the handler acked.", "subscriber").WithLabelValues(name),
		nacked: registerCounterVec(reg, "nacked_total",
			"Messages the handler nacked (requeued after SubscriberConfig.NackDelay).", "subscriber").WithLabelValues(name),
	}
}
