package qos

import (
	"strings"
	"time"
)

// State is the limiter's view of the process.
type State int32

const (
	// Normal: no pressure. The limit may grow while handlers wait for slots.
	Normal State = iota
	// Pressure: a signal is over its threshold. The adaptive limit shrinks and the
	// attached subscriptions' prefetch is lowered to their share of the limit.
	Pressure
	// Stopped: memory is over the hard limit. No message starts and the attached
	// subscriptions are paused until memory falls back.
	Stopped
)

func (s State) String() string {
	switch s {
	case Normal:
		return "normal"
	case Pressure:
		return "pressure"
	case Stopped:
		return "stopped"
	}
	return "unknown"
}

// Reason is a set of signals that are over their thresholds.
type Reason uint8

const (
	// ReasonMemorySoft: memory in use is over the soft limit.
	ReasonMemorySoft Reason = 1 << iota
	// ReasonMemoryHard: memory in use is over the hard limit (intake stops).
	ReasonMemoryHard
	// ReasonSchedLatency: the goroutine scheduling latency (p99) is over its target.
	ReasonSchedLatency
	// ReasonGCCPU: the share of CPU spent on garbage collection is over its target.
	ReasonGCCPU
	// ReasonHandlerLatency: handlers got much slower than their baseline while
	// messages were waiting for slots.
	ReasonHandlerLatency
)

var reasonNames = []string{"memory_soft", "memory_hard", "sched_latency", "gc_cpu", "handler_latency"}

// Has reports whether every reason in o is in r.
func (r Reason) Has(o Reason) bool { return r&o == o && o != 0 }

func (r Reason) String() string {
	if r == 0 {
		return "none"
	}
	var parts []string
	for i, name := range reasonNames {
		if r&(1<<i) != 0 {
			parts = append(parts, name)
		}
	}
	return strings.Join(parts, ",")
}

// Signals is one sample of the process signals that drive the limiter.
type Signals struct {
	// SchedLatencyP99 is the 99th percentile of the time goroutines waited to run,
	// over the goroutines scheduled since the previous sample (/sched/latencies:seconds).
	SchedLatencyP99 time.Duration
	// MemoryUsed is the memory the process would keep if it collected garbage now:
	// live heap as marked by the last GC (/gc/heap/live:bytes) plus the runtime's
	// non-heap memory (stacks, metadata).
	MemoryUsed int64
	// MemoryLimit is the runtime's soft memory limit (GOMEMLIMIT), 0 when none is set.
	MemoryLimit int64
	// GCCPUFraction is the share of the available CPU (GOMAXPROCS × wall time) spent
	// on garbage collection, idle-priority marking excluded, over the GC cycles that
	// ended since the previous sample; 0 when none ended.
	GCCPUFraction float64
	// GCCycles is the number of completed GC cycles (/gc/cycles/total:gc-cycles).
	GCCycles uint64
	// GOMAXPROCS at the time of the sample; 0 means unknown.
	GOMAXPROCS int
}

// SignalSource produces samples. Sample is called from the goroutine running
// Limiter.Run only, once per sample interval.
type SignalSource interface {
	Sample() Signals
}

// policy is the pure limit-adjustment rule: no clock, no goroutine, no I/O.
type policy struct {
	adaptive     bool
	min, max     int
	static       int
	softMem      int64 // absolute; 0 = derive from the sampled memory limit
	hardMem      int64
	memOff       bool
	schedTarget  time.Duration // 0 = off
	gcTarget     float64       // 0 = off
	latTolerance float64       // 0 = off
}

// policyState is what the policy remembers between samples.
type policyState struct {
	limit    int
	state    State
	baseline time.Duration // handler latency baseline (slowly rising minimum)
}

// observation is the input of one step.
type observation struct {
	sig        Signals
	latMean    time.Duration // mean handler time of messages that ended in the interval
	latCount   int64
	saturated  bool // a message waited for a global slot during the interval
	soft, hard int64
}

const (
	baselineDriftDiv = 200 // the latency baseline forgets a low value by 0.5 % a sample
	minLatSamples    = 4   // fewer finished messages than this say nothing about latency
	growDivisor      = 4   // growth step: limit/4 (at least 1)
	memShrinkNum     = 1   // memory soft pressure: halve
	memShrinkDen     = 2
	cpuShrinkNum     = 3 // CPU pressure: × 3/4, not below GOMAXPROCS
	cpuShrinkDen     = 4
	cpuFloorPerProc  = 4 // CPU pressure does not shrink the limit below 4 × GOMAXPROCS
	latShrinkNum     = 9 // handler latency pressure: × 9/10
	latShrinkDen     = 10
	softOfLimitPct   = 65 // default soft limit: 65 % of GOMEMLIMIT
	hardOfLimitPct   = 80 // default hard limit: 80 % of GOMEMLIMIT
)

// memLimits returns the soft and hard limits in force for a sample (0 = none).
func (p *policy) memLimits(sig Signals) (soft, hard int64) {
	if p.memOff {
		return 0, 0
	}
	soft, hard = p.softMem, p.hardMem
	if hard == 0 && sig.MemoryLimit > 0 {
		hard = sig.MemoryLimit / 100 * hardOfLimitPct
	}
	if soft == 0 && hard > 0 {
		if p.hardMem > 0 || sig.MemoryLimit <= 0 {
			soft = hard / hardOfLimitPct * softOfLimitPct
		} else {
			soft = sig.MemoryLimit / 100 * softOfLimitPct
		}
	}
	return soft, hard
}

// step computes the next state and limit from one observation.
func (p *policy) step(st policyState, ob observation) (policyState, Reason) {
	var r Reason
	used := ob.sig.MemoryUsed
	if ob.hard > 0 {
		// Hysteresis: once stopped, stay stopped until memory is back below the middle
		// of the soft and hard limits, so that intake does not flap at the threshold.
		resume := ob.hard
		if st.state == Stopped && ob.soft > 0 && ob.soft < ob.hard {
			resume = ob.soft + (ob.hard-ob.soft)/2
		}
		if used >= resume {
			r |= ReasonMemoryHard
		}
	}
	if r == 0 && ob.soft > 0 && used >= ob.soft {
		r |= ReasonMemorySoft
	}
	if p.adaptive {
		if p.schedTarget > 0 && ob.sig.SchedLatencyP99 >= p.schedTarget {
			r |= ReasonSchedLatency
		}
		if p.gcTarget > 0 && ob.sig.GCCPUFraction >= p.gcTarget {
			r |= ReasonGCCPU
		}
		if p.latTolerance > 0 && ob.saturated && st.baseline > 0 && ob.latCount >= minLatSamples &&
			float64(ob.latMean) >= p.latTolerance*float64(st.baseline) {
			r |= ReasonHandlerLatency
		}
	}
	if ob.latCount >= minLatSamples {
		drifted := st.baseline + st.baseline/baselineDriftDiv
		switch {
		case st.baseline == 0 || ob.latMean < st.baseline:
			st.baseline = ob.latMean
		case drifted < ob.latMean:
			st.baseline = drifted
		default:
			st.baseline = ob.latMean
		}
	}

	prev := st.state
	switch {
	case r&ReasonMemoryHard != 0:
		st.state = Stopped
		if prev != Stopped && p.adaptive {
			// Start again from half the limit when memory has fallen back.
			st.limit = max(p.min, st.limit/2)
		}
	case r != 0:
		st.state = Pressure
		if p.adaptive {
			l := st.limit
			if r&ReasonMemorySoft != 0 {
				l = min(l, max(p.min, st.limit*memShrinkNum/memShrinkDen))
			}
			if r&(ReasonSchedLatency|ReasonGCCPU) != 0 {
				// Fewer handlers than Ps cannot relieve the CPU, and with only as many as
				// Ps they idle between a message and the next: stop at 4 × GOMAXPROCS.
				floor := max(p.min, cpuFloorPerProc*ob.sig.GOMAXPROCS)
				l = min(l, max(floor, st.limit*cpuShrinkNum/cpuShrinkDen))
			}
			if r&ReasonHandlerLatency != 0 {
				l = min(l, max(p.min, st.limit*latShrinkNum/latShrinkDen))
			}
			st.limit = l
		}
	default:
		st.state = Normal
		if p.adaptive && ob.saturated {
			next := min(p.max, st.limit+max(1, st.limit/growDivisor))
			// Near the soft limit, grow no further than memory per message in flight
			// (overestimated: used/limit counts the base memory too) says still fits
			// under it: the live heap is measured late, a step must not overshoot.
			if ob.soft > 0 && used > 0 {
				fit := int(float64(st.limit) * float64(ob.soft) / float64(used))
				next = max(st.limit, min(next, fit))
			}
			st.limit = next
		}
	}
	if !p.adaptive {
		st.limit = p.static
	}
	return st, r
}

// effectiveLimit is the global gate's limit for a state.
func effectiveLimit(st policyState) int {
	if st.state == Stopped {
		return 0
	}
	return st.limit
}
