package qos

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// waitBuckets are the upper bounds (seconds) of the wait time histogram. Messages that
// did not wait count in the first bucket.
var waitBuckets = []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30}

// stats are the limiter's counters, kept as atomics so that the hot path pays one
// atomic add for a message that does not wait; the collector turns them into
// Prometheus metrics at scrape time.
type stats struct {
	admitted    atomic.Uint64 // messages let through
	waitedOK    atomic.Uint64 // of which had to wait
	buckets     []atomic.Uint64
	waitSumNs   atomic.Int64 // wait of admitted messages that waited
	throttled   atomic.Uint64
	throttledNs atomic.Int64
	paused      atomic.Uint64
	pausedNs    atomic.Int64
	soft, hard  atomic.Int64
}

func newStats() *stats {
	return &stats{buckets: make([]atomic.Uint64, len(waitBuckets)+1)}
}

func (s *stats) admit(waited time.Duration) {
	if waited > 0 {
		s.throttle(waited)
		i := 0
		for i < len(waitBuckets) && waited.Seconds() > waitBuckets[i] {
			i++
		}
		s.buckets[i].Add(1)
		s.waitSumNs.Add(int64(waited))
		s.waitedOK.Add(1)
	}
	s.admitted.Add(1)
}

func (s *stats) refuse(waited time.Duration) {
	if waited > 0 {
		s.throttle(waited)
	}
}

func (s *stats) throttle(waited time.Duration) {
	s.throttled.Add(1)
	s.throttledNs.Add(int64(waited))
}

func (s *stats) setMemLimits(soft, hard int64) {
	s.soft.Store(soft)
	s.hard.Store(hard)
}

// collector exports the metrics of every Limiter registered on one Registerer: counts
// and gauges of the limiters are summed, process signals (the same for every limiter
// of a process) are taken from the latest, and the state gauge counts limiters per
// state. A second Limiter on the same Registerer joins the collector already there.
type collector struct {
	mu       sync.Mutex
	limiters []*Limiter

	limit, inFlight, inFlightBytes, wait, throttled, throttledSec, paused, pausedSec,
	sched, memUsed, memSoft, memHard, gcCPU, handlerLat, state *prometheus.Desc
}

func newCollector() *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("micromessaging_qos_"+name, help, labels, nil)
	}
	return &collector{
		limit:         d("limit", "Current global limit on messages handled at once (0 while intake is stopped)."),
		inFlight:      d("in_flight", "Messages being handled now."),
		inFlightBytes: d("in_flight_bytes", "Payload bytes of the messages being handled now."),
		wait:          d("wait_seconds", "Time messages waited for a slot before their handler ran."),
		throttled:     d("throttled_total", "Messages that had to wait for a slot."),
		throttledSec:  d("throttled_seconds_total", "Total time messages waited for a slot."),
		paused:        d("paused_total", "Times intake was stopped (hard memory limit) and subscriptions paused."),
		pausedSec:     d("paused_seconds_total", "Total time intake was stopped."),
		sched:         d("sched_latency_p99_seconds", "p99 goroutine scheduling latency over the last sample interval."),
		memUsed:       d("memory_used_bytes", "Memory in use: live heap after the last GC plus non-heap runtime memory."),
		memSoft:       d("memory_soft_limit_bytes", "Soft memory limit in force (0 = none)."),
		memHard:       d("memory_hard_limit_bytes", "Hard memory limit in force (0 = none)."),
		gcCPU:         d("gc_cpu_fraction", "Share of available CPU spent in GC over the last sample interval."),
		handlerLat:    d("handler_latency_seconds", "Mean handler time over the last sample interval."),
		state:         d("state", "1 for the limiter's current state (summed over limiters).", "state"),
	}
}

func registerCollector(reg prometheus.Registerer) (*collector, error) {
	c := newCollector()
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*collector); ok {
				return existing, nil
			}
		}
		return nil, err
	}
	return c, nil
}

func (c *collector) add(l *Limiter) {
	c.mu.Lock()
	c.limiters = append(c.limiters, l)
	c.mu.Unlock()
}

func (c *collector) remove(l *Limiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.limiters {
		if x == l {
			c.limiters = append(c.limiters[:i:i], c.limiters[i+1:]...)
			return
		}
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.limit, c.inFlight, c.inFlightBytes, c.wait, c.throttled,
		c.throttledSec, c.paused, c.pausedSec, c.sched, c.memUsed, c.memSoft, c.memHard, c.gcCPU,
		c.handlerLat, c.state} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	ls := append([]*Limiter(nil), c.limiters...)
	c.mu.Unlock()

	var (
		limit, inFlight, inFlightBytes, throttledSec, pausedSec, waitSum, handlerLat float64
		throttled, paused, count                                                     uint64
		buckets                                                                      = make([]uint64, len(waitBuckets))
		states                                                                       [3]float64
		sig                                                                          Signals
		soft, hard                                                                   int64
	)
	for _, l := range ls {
		s := l.stats
		var cum, waited uint64
		for i := range waitBuckets {
			cum += s.buckets[i].Load()
			buckets[i] += cum
		}
		waited = s.waitedOK.Load()
		admitted := max(s.admitted.Load(), waited)
		for i := range waitBuckets {
			buckets[i] += admitted - waited
		}
		count += admitted
		waitSum += float64(s.waitSumNs.Load()) / 1e9
		throttled += s.throttled.Load()
		throttledSec += float64(s.throttledNs.Load()) / 1e9
		paused += s.paused.Load()
		ps := float64(s.pausedNs.Load()) / 1e9
		if State(l.state.Load()) == Stopped && l.pausedSinceNs.Load() != 0 {
			ps += time.Since(time.Unix(0, l.pausedSinceNs.Load())).Seconds()
		}
		pausedSec += ps
		limit += float64(l.limit.Load())
		n, b := l.global.inFlight()
		inFlight += float64(n)
		inFlightBytes += float64(b)
		states[min(max(int(l.state.Load()), 0), 2)]++
		sig = *l.lastSig.Load()
		soft, hard = s.soft.Load(), s.hard.Load()
		handlerLat = max(handlerLat, float64(l.lastLat.Load())/1e9)
	}
	count = max(count, buckets[len(buckets)-1])
	hb := make(map[float64]uint64, len(waitBuckets))
	for i, ub := range waitBuckets {
		hb[ub] = buckets[i]
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.limit, limit)
	gauge(c.inFlight, inFlight)
	gauge(c.inFlightBytes, inFlightBytes)
	ch <- prometheus.MustNewConstHistogram(c.wait, count, waitSum, hb)
	counter(c.throttled, float64(throttled))
	counter(c.throttledSec, throttledSec)
	counter(c.paused, float64(paused))
	counter(c.pausedSec, pausedSec)
	gauge(c.sched, sig.SchedLatencyP99.Seconds())
	gauge(c.memUsed, float64(sig.MemoryUsed))
	gauge(c.memSoft, float64(soft))
	gauge(c.memHard, float64(hard))
	gauge(c.gcCPU, sig.GCCPUFraction)
	gauge(c.handlerLat, handlerLat)
	for i, st := range []State{Normal, Pressure, Stopped} {
		gauge(c.state, states[i], st.String())
	}
}
