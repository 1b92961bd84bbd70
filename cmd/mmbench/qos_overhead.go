package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
)

// qos-overhead: the cost of the QoS middleware on the consume path. Like consume (n
// pre-filled persistent messages drained by a router handler that returns nil on a
// rabbitmq.Subscriber, prefetch 100), run -opt rounds=3 times without and with a
// default (adaptive) qos.Limiter attached to the subscriber, alternating. Seconds is the
// median run with QoS; Opts gives both medians and their ratio.
func init() {
	register("qos-overhead", qosOverhead)
}

func qosOverhead(ctx context.Context, cfg config) (result, error) {
	rounds, err := cfg.optInt("rounds", 3)
	if err != nil {
		return result{}, err
	}
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	var off, on []time.Duration
	var limits, pressures []int
	for i := 0; i < 2*rounds; i++ {
		withQoS := i%2 == 1
		q, err := declareFilled(ctx, cfg.url, "qos-overhead", cfg.n, cfg.size)
		if err != nil {
			return result{}, err
		}
		r := qosRun{url: cfg.url, queue: q, n: cfg.n, prefetch: prefetch, name: "mmbench-qos-overhead",
			handler: func(*message.Message) error { return nil }}
		if withQoS {
			r.limiter = &qos.Config{Prefetch: prefetch}
		}
		out, err := runQoSConsumer(ctx, r)
		deleteQueue(cfg.url, q)
		if err != nil {
			return result{}, err
		}
		if withQoS {
			on = append(on, out.elapsed)
			limits = append(limits, out.lastLim)
			pressures = append(pressures, out.pressure)
		} else {
			off = append(off, out.elapsed)
		}
	}
	med := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	mOn, mOff := med(on), med(off)
	rate := func(d time.Duration) float64 { return round(float64(cfg.n)/d.Seconds(), 0) }
	return result{
		Seconds:     mOn.Seconds(),
		Concurrency: 1,
		Opts: fmt.Sprintf("prefetch=%d rounds=%d without_qos=%.0f/s with_qos=%.0f/s ratio=%.3f (runs off %v on %v) final_limits=%v pressure_events=%v best off %.0f/s on %.0f/s",
			prefetch, rounds, rate(mOff), rate(mOn), mOff.Seconds()/mOn.Seconds(), rates(cfg.n, off), rates(cfg.n, on), limits, pressures,
			float64(cfg.n)/minDur(off).Seconds(), float64(cfg.n)/minDur(on).Seconds()),
	}, nil
}

func rates(n int, ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = round(float64(n)/d.Seconds(), 0)
	}
	return out
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}
