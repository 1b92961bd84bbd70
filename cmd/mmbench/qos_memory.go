package main

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
)

// qos-memory: a flood of memory-hungry messages under a memory limit. GOMEMLIMIT is set
// to -opt limit_mb=512 (debug.SetMemoryLimit); n pre-filled messages are consumed with
// prefetch -prefetch (default 1000) and each handler allocates -opt hold_mb=4 MiB,
// writes every page, and holds it for -opt hold_ms=200 ms. -opt qos=on (default) puts
// the default adaptive limiter (hard limit 80 % of GOMEMLIMIT) in front and attaches
// it to the subscriber; off runs without it. Opts reports the peaks of the memory in
// use (live heap + non-heap, what qos measures), of the heap objects, of the Go mapped
// memory and of RSS (VmHWM: run one mode per process), and the worst lateness of a
// goroutine that wants to run every 10 ms ("keeps answering").
func init() {
	register("qos-memory", qosMemory)
}

func qosMemory(ctx context.Context, cfg config) (result, error) {
	holdMB, err := cfg.optInt("hold_mb", 4)
	if err != nil {
		return result{}, err
	}
	holdMs, err := cfg.optInt("hold_ms", 200)
	if err != nil {
		return result{}, err
	}
	limitMB, err := cfg.optInt("limit_mb", 512)
	if err != nil {
		return result{}, err
	}
	withQoS, err := optBool(cfg, "qos", true)
	if err != nil {
		return result{}, err
	}
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 1000
	}
	q, err := declareFilled(ctx, cfg.url, "qos-memory", cfg.n, cfg.size)
	if err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)

	limit := int64(limitMB) << 20
	old := debug.SetMemoryLimit(limit)
	defer debug.SetMemoryLimit(old)
	hold := holdMB << 20
	handler := func(*message.Message) error {
		b := make([]byte, hold)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(time.Duration(holdMs) * time.Millisecond)
		spinSink.Add(uint64(b[len(b)-1]))
		return nil
	}
	trace, err := optBool(cfg, "trace", false)
	if err != nil {
		return result{}, err
	}
	r := qosRun{url: cfg.url, queue: q, n: cfg.n, prefetch: prefetch, handler: handler, name: "mmbench-qos-memory", trace: trace}
	if withQoS {
		r.limiter = &qos.Config{Prefetch: prefetch}
	}
	out, err := runQoSConsumer(ctx, r)
	if err != nil {
		return result{}, err
	}
	hard := limit / 100 * 80
	mode := "off"
	if withQoS {
		mode = fmt.Sprintf("on (hard %.0f MiB; pressure events %d, stops %d, limit max %d, samples normal/pressure/stopped %d/%d/%d)",
			mib(uint64(hard)), out.pressure, out.pauses, out.maxLimit,
			out.states[qos.Normal], out.states[qos.Pressure], out.states[qos.Stopped])
	}
	return result{
		Seconds:     out.elapsed.Seconds(),
		Concurrency: prefetch,
		P50us:       percentile(out.inProc, 50),
		P99us:       percentile(out.inProc, 99),
		Opts: fmt.Sprintf("qos=%s GOMEMLIMIT=%dMiB hold=%dMiB×%dms prefetch=%d; peak MiB: in_use(live+nonheap)=%.0f heap_objects=%.0f go_mapped=%.0f rss_hwm=%.0f; probe lateness p99=%v max=%v",
			mode, limitMB, holdMB, holdMs, prefetch, mib(out.mem.retained), mib(out.mem.heapObjects), mib(out.mem.mapped),
			mib(vmHWM()), out.probe.p99.Round(time.Millisecond), out.probe.max.Round(time.Millisecond)),
	}, nil
}
