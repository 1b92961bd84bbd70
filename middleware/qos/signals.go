package qos

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	mSchedLat    = "/sched/latencies:seconds"
	mHeapLive    = "/gc/heap/live:bytes"
	mTotal       = "/memory/classes/total:bytes"
	mReleased    = "/memory/classes/heap/released:bytes"
	mObjects     = "/memory/classes/heap/objects:bytes"
	mUnused      = "/memory/classes/heap/unused:bytes"
	mFree        = "/memory/classes/heap/free:bytes"
	mCPUTotal    = "/cpu/classes/total:cpu-seconds"
	mCPUGC       = "/cpu/classes/gc/total:cpu-seconds"
	mCPUGCIdle   = "/cpu/classes/gc/mark/idle:cpu-seconds"
	mGCCycles    = "/gc/cycles/total:gc-cycles"
	nRuntimeVals = 11
)

// runtimeSignals reads the Go runtime's own metrics (runtime/metrics). It keeps the
// previous cumulative values to report deltas, so it must be used by one goroutine.
type runtimeSignals struct {
	samples    []metrics.Sample
	prevCounts []uint64
	prevCPU    float64
	prevGC     float64
	primed     bool
}

func newRuntimeSignals() *runtimeSignals {
	names := []string{mSchedLat, mHeapLive, mTotal, mReleased, mObjects, mUnused, mFree,
		mCPUTotal, mCPUGC, mCPUGCIdle, mGCCycles}
	s := &runtimeSignals{samples: make([]metrics.Sample, len(names))}
	for i, n := range names {
		s.samples[i].Name = n
	}
	return s
}

func (s *runtimeSignals) Sample() Signals {
	metrics.Read(s.samples)
	v := func(i int) uint64 {
		if s.samples[i].Value.Kind() == metrics.KindUint64 {
			return s.samples[i].Value.Uint64()
		}
		return 0
	}
	f := func(i int) float64 {
		if s.samples[i].Value.Kind() == metrics.KindFloat64 {
			return s.samples[i].Value.Float64()
		}
		return 0
	}
	var sig Signals

	if s.samples[0].Value.Kind() == metrics.KindFloat64Histogram {
		h := s.samples[0].Value.Float64Histogram()
		if s.primed && len(s.prevCounts) == len(h.Counts) {
			sig.SchedLatencyP99 = deltaQuantile(h.Buckets, h.Counts, s.prevCounts, 0.99)
		}
		s.prevCounts = append(s.prevCounts[:0], h.Counts...)
	}

	live, total, released := v(1), v(2), v(3)
	heap := v(4) + v(5) + v(6) + released
	var nonHeap uint64
	if total > heap {
		nonHeap = total - heap
	}
	sig.MemoryUsed = int64(live + nonHeap)
	if lim := debug.SetMemoryLimit(-1); lim > 0 && lim < math.MaxInt64 {
		sig.MemoryLimit = lim
	}

	cpu, gc := f(7), f(8)-f(9)
	if s.primed && cpu > s.prevCPU {
		sig.GCCPUFraction = max(0, (gc-s.prevGC)/(cpu-s.prevCPU))
	}
	s.prevCPU, s.prevGC = cpu, gc
	sig.GCCycles = v(10)
	sig.GOMAXPROCS = runtime.GOMAXPROCS(0)
	s.primed = true
	return sig
}

// deltaQuantile returns the q-quantile of the histogram cur-prev, as the upper bound of
// the bucket that holds it (the lower bound for the last, unbounded bucket); 0 when
// the delta is empty.
func deltaQuantile(bounds []float64, cur, prev []uint64, q float64) time.Duration {
	var total uint64
	for i := range cur {
		total += cur[i] - prev[i]
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i := range cur {
		seen += cur[i] - prev[i]
		if seen >= rank {
			b := bounds[i+1]
			if math.IsInf(b, 1) {
				b = bounds[i]
			}
			return time.Duration(b * float64(time.Second))
		}
	}
	return 0
}
