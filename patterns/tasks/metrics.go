package tasks

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a handled task (label "outcome" of micromessaging_tasks_handled_total and
// micromessaging_tasks_handling_seconds).
const (
	OutcomeSuccess    = "success"     // the handler returned nil; acked
	OutcomeRetry      = "retry"       // failed; a copy went to the retry queue; acked
	OutcomeDeadLetter = "dead_letter" // failed the last attempt; a copy went to the dead-letter queue; acked
	OutcomeRequeue    = "requeue"     // failed, and the copy could not be published, or the delivery was cancelled (channel lost): nacked, the broker keeps it
)

// Reasons of a failed attempt (label "reason" of micromessaging_tasks_failures_total).
const (
	ReasonError   = "error"   // the handler returned an error
	ReasonPanic   = "panic"   // the handler panicked
	ReasonTimeout = "timeout" // the handler ran past MaxDuration
)

// Outcomes of sending a task (label "outcome" of micromessaging_tasks_sent_total).
const (
	SentOK         = "ok"
	SentUnroutable = "unroutable"
	SentError      = "error"
)

type workerMetrics struct {
	handled   *prometheus.CounterVec   // route, outcome
	seconds   *prometheus.HistogramVec // route, outcome
	retries   *prometheus.CounterVec   // route
	dead      *prometheus.CounterVec   // route
	failures  *prometheus.CounterVec   // route, reason
	abandoned *prometheus.GaugeVec     // route: handlers still running after MaxDuration
}

func newWorkerMetrics(reg prometheus.Registerer) *workerMetrics {
	return &workerMetrics{
		handled: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "handled_total",
			Help: "Task deliveries handled by the worker, by route and outcome (success, retry, dead_letter, requeue).",
		}, []string{"route", "outcome"})),
		seconds: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "handling_seconds",
			Help:    "Time the worker spent on a task delivery (the handler, then the retry or dead-letter copy), by route and outcome.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 60, 300, 1800},
		}, []string{"route", "outcome"})),
		retries: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "retries_total",
			Help: "Failed tasks published to a retry queue, by route.",
		}, []string{"route"})),
		dead: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "dead_lettered_total",
			Help: "Tasks published to the dead-letter queue after their last attempt, by route.",
		}, []string{"route"})),
		failures: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "failures_total",
			Help: "Failed task attempts, by route and reason (error, panic, timeout).",
		}, []string{"route", "reason"})),
		abandoned: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "micromessaging", Subsystem: "tasks", Name: "abandoned_handlers",
			Help: "Task handlers still running after their task timed out (MaxDuration) and was retried, by route.",
		}, []string{"route"})),
	}
}

func newSentMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "micromessaging", Subsystem: "tasks", Name: "sent_total",
		Help: "Tasks sent, by route and outcome (ok, unroutable, error).",
	}, []string{"route", "outcome"}))
}

// register registers c with reg (nil: not at all) and returns the collector already
// registered under the same description, if any, so two instances share one registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
