package rabbitmq_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/rabbitmq"
)

// TestMetricsShareARegistry: several components on one registry reuse the collectors
// instead of failing, and each reports under its own name.
func TestMetricsShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	var conns []*rabbitmq.Connection
	for _, name := range []string{"a", "b"} {
		c, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{Name: name, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := rabbitmq.NewPublisher(c, rabbitmq.PublisherConfig{Name: name, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
		if _, err := rabbitmq.NewSubscriber(c, rabbitmq.SubscriberConfig{Name: name, Registerer: reg}); err != nil {
			t.Fatal(err)
		}
	}
	_ = conns[1].Close()
	if v := metricValue(t, reg, "micromessaging_rabbitmq_connection_state", "connection", "a"); v != float64(rabbitmq.Disconnected) {
		t.Fatalf("state of a = %v", v)
	}
	if v := metricValue(t, reg, "micromessaging_rabbitmq_connection_state", "connection", "b"); v != float64(rabbitmq.Closed) {
		t.Fatalf("state of b = %v", v)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"micromessaging_rabbitmq_connection_state", "micromessaging_rabbitmq_connection_blocked"} {
		if !names[want] {
			t.Errorf("%s not registered (have %v)", want, names)
		}
	}
}
