package rpc

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/wire"
)

// loopback is a Publisher that hands requests to a server handler and replies to a
// client, synchronously, as copies (like a broker would): the CPU cost of the rpc code
// alone, without transport or codec.
type loopback struct {
	serve  message.NoPublishHandlerFunc
	client *Client
}

func (l *loopback) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		c := m.Copy()
		if c.Metadata.Get(wire.MetaReplyTo) != "" {
			go l.serve(c) // a request: the server runs on a goroutine of its own
		} else {
			l.client.HandleReply(c)
		}
	}
	return nil
}

func (l *loopback) Close() error { return nil }

// BenchmarkRoundTripNoBroker measures the rpc code of one call on each side.
func BenchmarkRoundTripNoBroker(b *testing.B) {
	reg := prometheus.NewRegistry()
	lb := &loopback{}
	srv, err := NewServer(ServerConfig{Service: "svc", Publisher: lb, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	cl, err := NewClient(ClientConfig{Service: "caller", Publisher: lb, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	lb.client = cl
	lb.serve = srv.HandlerFunc("echo", func(ctx context.Context, req *Request) (any, error) { return req.Body, nil })
	body := json.RawMessage(`"` + string(make([]byte, 254)) + `"`)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := cl.Request(ctx, "svc", "echo", body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
