package qos

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
)

func nopHandler(*message.Message) ([]*message.Message, error) { return nil, nil }

func benchHandler(b *testing.B, h message.HandlerFunc) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		msg := message.NewMessage("bench", make([]byte, 512))
		for pb.Next() {
			if _, err := h(msg); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMiddleware measures the hot path: a message that finds a free slot.
func BenchmarkMiddleware(b *testing.B) {
	b.Run("none", func(b *testing.B) { benchHandler(b, nopHandler) })
	b.Run("adaptive", func(b *testing.B) {
		l, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		benchHandler(b, l.Middleware(nopHandler))
	})
	b.Run("static+bytes+routes", func(b *testing.B) {
		l, err := New(Config{Mode: Static, MaxInFlight: 1000, MaxBytesInFlight: 1 << 30,
			Routes: map[string]RouteLimit{"": {MaxInFlight: 1000}}})
		if err != nil {
			b.Fatal(err)
		}
		benchHandler(b, l.Middleware(nopHandler))
	})
	// Limit 1: every message but one waits (the slow path, for scale).
	b.Run("contended-limit-1", func(b *testing.B) {
		l, err := New(Config{Mode: Static, MaxInFlight: 1})
		if err != nil {
			b.Fatal(err)
		}
		benchHandler(b, l.Middleware(nopHandler))
	})
}
