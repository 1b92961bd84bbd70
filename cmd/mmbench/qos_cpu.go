package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
)

// qos-cpu: CPU-bound handlers (-opt work_ms=5 of calibrated busy loop each) on a
// subscriber with prefetch -prefetch (default 64, the concurrency of the Node figures).
// Runs, each on n fresh pre-filled messages: without QoS, with static limits
// -opt sweep=1,2,4,8,16,64, and with the default adaptive limiter. With -opt reps=R the
// configurations run R times, interleaved, and each reports its median run. Seconds,
// p50 and p99 (time from the router's handler goroutine to the end, QoS wait
// included) are the adaptive run's; Opts lists every
// run and the ratio of adaptive to the best static throughput.
func init() {
	register("qos-cpu", qosCPU)
}

func qosCPU(ctx context.Context, cfg config) (result, error) {
	workMs, err := cfg.optInt("work_ms", 5)
	if err != nil {
		return result{}, err
	}
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 64
	}
	var sweep []int
	for _, f := range strings.Split(optString(cfg, "sweep", "1,2,4,8,16,64"), ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return result{}, fmt.Errorf("-opt sweep: bad limit %q", f)
		}
		sweep = append(sweep, v)
	}
	trace, err := optBool(cfg, "trace", false)
	if err != nil {
		return result{}, err
	}
	spin := calibrateSpinner(time.Duration(workMs) * time.Millisecond)
	handler := func(*message.Message) error { spin.spin(); return nil }

	type run struct {
		label string
		cfg   *qos.Config
	}
	runs := []run{{"none", nil}}
	for _, l := range sweep {
		runs = append(runs, run{fmt.Sprintf("static-%d", l), &qos.Config{Mode: qos.Static, MaxInFlight: l, Prefetch: prefetch}})
	}
	runs = append(runs, run{"adaptive", &qos.Config{Prefetch: prefetch}})

	reps, err := cfg.optInt("reps", 1)
	if err != nil || reps < 1 {
		return result{}, fmt.Errorf("-opt reps: want >= 1")
	}
	// Interleaved repetitions: a noisy neighbour hits every configuration alike.
	outs := make([][]qosOut, len(runs))
	for rep := 0; rep < reps; rep++ {
		for i, r := range runs {
			q, err := declareFilled(ctx, cfg.url, "qos-cpu", cfg.n, cfg.size)
			if err != nil {
				return result{}, err
			}
			out, err := runQoSConsumer(ctx, qosRun{url: cfg.url, queue: q, n: cfg.n, prefetch: prefetch,
				limiter: r.cfg, handler: handler, name: "mmbench-qos-cpu", trace: trace && r.cfg != nil})
			deleteQueue(cfg.url, q)
			if err != nil {
				return result{}, fmt.Errorf("%s: %w", r.label, err)
			}
			outs[i] = append(outs[i], out)
		}
	}
	var (
		report   []string
		best     float64
		bestName string
		adaptive qosOut
		atop     float64
		bestTop  float64
	)
	for i, r := range runs {
		sort.Slice(outs[i], func(a, b int) bool { return outs[i][a].elapsed < outs[i][b].elapsed })
		out := outs[i][len(outs[i])/2] // median by time
		rate := float64(cfg.n) / out.elapsed.Seconds()
		top := float64(cfg.n) / outs[i][0].elapsed.Seconds()
		var all []time.Duration
		for _, o := range outs[i] {
			all = append(all, o.elapsed)
		}
		line := fmt.Sprintf("%s=%.0f/s best %.0f/s %v p99=%.0fms", r.label, rate, top, rates(cfg.n, all), percentile(out.inProc, 99)/1e3)
		if r.label == "adaptive" {
			adaptive, atop = out, top
			line += fmt.Sprintf(" (limit max %d last %d, samples normal/pressure %d/%d, flow control calls %d)",
				out.maxLimit, out.lastLim, out.states[qos.Normal], out.states[qos.Pressure], out.flowOps)
		}
		if strings.HasPrefix(r.label, "static") {
			if rate > best {
				best, bestName = rate, r.label
			}
			bestTop = max(bestTop, top)
		}
		report = append(report, line)
	}
	arate := float64(cfg.n) / adaptive.elapsed.Seconds()
	return result{
		Seconds:     adaptive.elapsed.Seconds(),
		Concurrency: prefetch,
		P50us:       percentile(adaptive.inProc, 50),
		P99us:       percentile(adaptive.inProc, 99),
		Opts: fmt.Sprintf("work_ms=%d prefetch=%d gomaxprocs=%d reps=%d; %s; adaptive/best static: median %.3f (best static %s), best-of-runs %.3f",
			workMs, prefetch, gomaxprocs(), reps, strings.Join(report, "; "), arate/best, bestName, atop/bestTop),
	}, nil
}
