package qos

import (
	"testing"
	"time"
)

func adaptivePolicy() policy {
	return policy{adaptive: true, min: 1, max: 100, schedTarget: 20 * time.Millisecond,
		gcTarget: 0.3, latTolerance: 5}
}

func TestPolicyStep(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		pol     policy
		st      policyState
		ob      observation
		want    policyState
		reasons Reason
	}{
		{"grows while saturated and healthy", adaptivePolicy(),
			policyState{limit: 16}, observation{saturated: true},
			policyState{limit: 20}, 0},
		{"grows by at least one", adaptivePolicy(),
			policyState{limit: 2}, observation{saturated: true},
			policyState{limit: 3}, 0},
		{"holds when not saturated", adaptivePolicy(),
			policyState{limit: 16}, observation{},
			policyState{limit: 16}, 0},
		{"growth slows near the soft limit", adaptivePolicy(),
			policyState{limit: 40}, observation{saturated: true, sig: Signals{MemoryUsed: 600}, soft: 650, hard: 800},
			policyState{limit: 43}, 0},
		{"growth unaffected far from the soft limit", adaptivePolicy(),
			policyState{limit: 40}, observation{saturated: true, sig: Signals{MemoryUsed: 300}, soft: 650, hard: 800},
			policyState{limit: 50}, 0},
		{"caps at max", adaptivePolicy(),
			policyState{limit: 90}, observation{saturated: true},
			policyState{limit: 100}, 0},
		{"soft memory halves", adaptivePolicy(),
			policyState{limit: 40}, observation{sig: Signals{MemoryUsed: 70}, soft: 65, hard: 80, saturated: true},
			policyState{limit: 20, state: Pressure}, ReasonMemorySoft},
		{"soft memory stops at min", adaptivePolicy(),
			policyState{limit: 1, state: Pressure}, observation{sig: Signals{MemoryUsed: 70}, soft: 65, hard: 80},
			policyState{limit: 1, state: Pressure}, ReasonMemorySoft},
		{"hard memory stops and halves once", adaptivePolicy(),
			policyState{limit: 40}, observation{sig: Signals{MemoryUsed: 80}, soft: 65, hard: 80},
			policyState{limit: 20, state: Stopped}, ReasonMemoryHard},
		{"stays stopped above the middle of soft and hard", adaptivePolicy(),
			policyState{limit: 20, state: Stopped}, observation{sig: Signals{MemoryUsed: 75}, soft: 60, hard: 80},
			policyState{limit: 20, state: Stopped}, ReasonMemoryHard},
		{"leaves stop below the middle, to pressure over soft", adaptivePolicy(),
			policyState{limit: 20, state: Stopped}, observation{sig: Signals{MemoryUsed: 69}, soft: 60, hard: 80},
			policyState{limit: 10, state: Pressure}, ReasonMemorySoft},
		{"leaves stop to normal below soft", adaptivePolicy(),
			policyState{limit: 20, state: Stopped}, observation{sig: Signals{MemoryUsed: 10}, soft: 60, hard: 80},
			policyState{limit: 20}, 0},
		{"sched latency shrinks by a quarter", adaptivePolicy(),
			policyState{limit: 40}, observation{sig: Signals{SchedLatencyP99: 30 * ms, GOMAXPROCS: 2}},
			policyState{limit: 30, state: Pressure}, ReasonSchedLatency},
		{"sched latency stops at 4 × GOMAXPROCS", adaptivePolicy(),
			policyState{limit: 9}, observation{sig: Signals{SchedLatencyP99: 30 * ms, GOMAXPROCS: 2}},
			policyState{limit: 8, state: Pressure}, ReasonSchedLatency},
		{"sched latency never raises a limit under GOMAXPROCS", adaptivePolicy(),
			policyState{limit: 2}, observation{sig: Signals{SchedLatencyP99: 30 * ms, GOMAXPROCS: 2}},
			policyState{limit: 2, state: Pressure}, ReasonSchedLatency},
		{"gc cpu shrinks", adaptivePolicy(),
			policyState{limit: 40}, observation{sig: Signals{GCCPUFraction: 0.5, GOMAXPROCS: 2}},
			policyState{limit: 30, state: Pressure}, ReasonGCCPU},
		{"handler latency over tolerance while saturated", adaptivePolicy(),
			policyState{limit: 40, baseline: 10 * ms}, observation{latMean: 60 * ms, latCount: 10, saturated: true},
			policyState{limit: 36, state: Pressure, baseline: 10050 * time.Microsecond}, ReasonHandlerLatency},
		{"handler latency ignored when not saturated", adaptivePolicy(),
			policyState{limit: 40, baseline: 10 * ms}, observation{latMean: 60 * ms, latCount: 10},
			policyState{limit: 40, baseline: 10050 * time.Microsecond}, 0},
		{"handler latency ignored on few samples", adaptivePolicy(),
			policyState{limit: 40, baseline: 10 * ms}, observation{latMean: 60 * ms, latCount: 2, saturated: true},
			policyState{limit: 50, baseline: 10 * ms}, 0},
		{"baseline follows a lower latency", adaptivePolicy(),
			policyState{limit: 40, baseline: 10 * ms}, observation{latMean: 2 * ms, latCount: 10},
			policyState{limit: 40, baseline: 2 * ms}, 0},
		{"several reasons: the smallest limit wins", adaptivePolicy(),
			policyState{limit: 40}, observation{sig: Signals{MemoryUsed: 70, SchedLatencyP99: time.Second, GOMAXPROCS: 2}, soft: 65, hard: 80},
			policyState{limit: 20, state: Pressure}, ReasonMemorySoft | ReasonSchedLatency},
		{"static: CPU signals do not count", policy{static: 10},
			policyState{limit: 10}, observation{sig: Signals{SchedLatencyP99: time.Second, GCCPUFraction: 0.9}, saturated: true},
			policyState{limit: 10}, 0},
		{"static: hard memory stops, limit kept", policy{static: 10},
			policyState{limit: 10}, observation{sig: Signals{MemoryUsed: 90}, soft: 65, hard: 80},
			policyState{limit: 10, state: Stopped}, ReasonMemoryHard},
		{"static: soft memory is pressure, limit kept", policy{static: 10},
			policyState{limit: 10}, observation{sig: Signals{MemoryUsed: 70}, soft: 65, hard: 80},
			policyState{limit: 10, state: Pressure}, ReasonMemorySoft},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, r := tt.pol.step(tt.st, tt.ob)
			if got != tt.want || r != tt.reasons {
				t.Fatalf("step = %+v, %v; want %+v, %v", got, r, tt.want, tt.reasons)
			}
		})
	}
}

func TestPolicyMemLimits(t *testing.T) {
	tests := []struct {
		name             string
		pol              policy
		memLimit         int64
		wantSoft, wantHd int64
	}{
		{"from GOMEMLIMIT", policy{}, 1000, 650, 800},
		{"no GOMEMLIMIT: none", policy{}, 0, 0, 0},
		{"configured", policy{softMem: 10, hardMem: 20}, 1000, 10, 20},
		{"hard only", policy{hardMem: 800}, 0, 650, 800},
		{"soft only", policy{softMem: 300}, 0, 300, 0},
		{"off", policy{memOff: true}, 1000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, h := tt.pol.memLimits(Signals{MemoryLimit: tt.memLimit})
			if s != tt.wantSoft || h != tt.wantHd {
				t.Fatalf("memLimits = %d, %d; want %d, %d", s, h, tt.wantSoft, tt.wantHd)
			}
		})
	}
}

func TestDeltaQuantile(t *testing.T) {
	bounds := []float64{0, 0.001, 0.01, 0.1, 1}
	prev := []uint64{10, 10, 10, 10}
	cur := []uint64{10, 109, 10, 11} // delta: 99 in (1ms,10ms], 1 in (0.1s,1s]
	if got := deltaQuantile(bounds, cur, prev, 0.99); got != 10*time.Millisecond {
		t.Fatalf("p99 = %v, want 10ms (upper bound of the bucket holding rank 99)", got)
	}
	if got := deltaQuantile(bounds, cur, prev, 1); got != time.Second {
		t.Fatalf("p100 = %v, want 1s", got)
	}
	if got := deltaQuantile(bounds, prev, prev, 0.99); got != 0 {
		t.Fatalf("empty delta = %v, want 0", got)
	}
}

func TestRuntimeSignals(t *testing.T) {
	s := newRuntimeSignals()
	s.Sample()
	// Make some scheduling and garbage.
	done := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() {
			b := make([]byte, 1<<20)
			_ = b
			done <- struct{}{}
		}()
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	sig := s.Sample()
	if sig.MemoryUsed <= 0 || sig.GOMAXPROCS <= 0 {
		t.Fatalf("implausible sample %+v", sig)
	}
	if sig.GCCPUFraction < 0 || sig.GCCPUFraction > 1 {
		t.Fatalf("GC CPU fraction %v out of [0,1]", sig.GCCPUFraction)
	}
}
