package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/middleware/qos"
)

// qos-share: two instances on one queue, one of them loaded. This process is the
// healthy instance; it starts a second process (this binary, internal scenario
// qos-share-loaded) that runs a load (-opt load=cpu: 2×GOMAXPROCS goroutines spinning;
// load=memory: GOMEMLIMIT 256 MiB with a 190 MiB live ballast, over the 65 % soft
// limit) and consumes the same queue. Both use prefetch -prefetch (default 100) and
// handlers of -opt work_ms=2 ms of busy loop; with -opt qos=on (default) both run the
// default adaptive limiter attached to their subscriber. When both are ready, n
// messages are published and the clock runs until both together handled n. Seconds is
// that time; Opts gives the share each instance took.
func init() {
	register("qos-share", qosShare)
	register("qos-share-loaded", qosShareLoaded)
}

func qosShare(ctx context.Context, cfg config) (result, error) {
	withQoS, err := optBool(cfg, "qos", true)
	if err != nil {
		return result{}, err
	}
	load := optString(cfg, "load", "cpu")
	if load != "cpu" && load != "memory" {
		return result{}, fmt.Errorf("-opt load=%s: want cpu or memory", load)
	}
	workMs, err := cfg.optInt("work_ms", 2)
	if err != nil {
		return result{}, err
	}
	prefetch := cfg.prefetch
	if prefetch == 0 {
		prefetch = 100
	}
	q, err := declareFilled(ctx, cfg.url, "qos-share", 0, cfg.size)
	if err != nil {
		return result{}, err
	}
	defer deleteQueue(cfg.url, q)

	exe, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	qosOpt := "off"
	if withQoS {
		qosOpt = "on"
	}
	cctx, stopChild := context.WithCancel(ctx)
	defer stopChild()
	cmd := exec.CommandContext(cctx, exe, "-scenario", "qos-share-loaded", "-url", cfg.url,
		"-n", strconv.Itoa(cfg.n), "-prefetch", strconv.Itoa(prefetch), "-size", strconv.Itoa(cfg.size),
		"-opt", "queue="+q, "-opt", "qos="+qosOpt, "-opt", "load="+load, "-opt", "work_ms="+strconv.Itoa(workMs))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return result{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	var (
		childCount atomic.Int64
		childReady = make(chan struct{})
		childLast  = make(chan string, 1)
	)
	go func() {
		sc := bufio.NewScanner(stdout)
		var last string
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				once.Do(func() { close(childReady) })
			case strings.HasPrefix(line, "count "):
				v, _ := strconv.ParseInt(strings.TrimPrefix(line, "count "), 10, 64)
				childCount.Store(v)
			case strings.HasPrefix(line, "{"):
				last = line
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		childLast <- last
	}()
	waitChild := func() error {
		_ = stdin.Close()
		err := cmd.Wait()
		if errors.Is(cctx.Err(), context.Canceled) {
			return nil
		}
		return err
	}
	select {
	case <-childReady:
	case <-ctx.Done():
		_ = waitChild()
		return result{}, ctx.Err()
	}

	spin := calibrateSpinner(time.Duration(workMs) * time.Millisecond)
	var own atomic.Int64
	pctx, stopParent := context.WithCancel(ctx)
	defer stopParent()
	parentReady := make(chan struct{})
	r := qosRun{url: cfg.url, queue: q, n: 0, prefetch: prefetch, name: "mmbench-qos-share",
		handler:  func(*message.Message) error { spin.spin(); return nil },
		progress: func(c int64) { own.Store(c) },
		ready:    func() { close(parentReady) }}
	if withQoS {
		r.limiter = &qos.Config{Prefetch: prefetch}
	}
	parentDone := make(chan error, 1)
	go func() { _, err := runQoSConsumer(pctx, r); parentDone <- err }()
	select {
	case <-parentReady:
	case err := <-parentDone:
		_ = waitChild()
		return result{}, err
	}

	conn, ch, err := dial(cfg.url)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	start := time.Now()
	if err := publishConfirmed(ctx, ch, q, cfg.n, 1, payload(cfg.size), 1000); err != nil {
		return result{}, err
	}
	for own.Load()+childCount.Load() < int64(cfg.n) {
		select {
		case <-ctx.Done():
			_ = waitChild()
			return result{}, fmt.Errorf("handled %d + %d of %d: %w", own.Load(), childCount.Load(), cfg.n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	stopParent()
	if err := <-parentDone; err != nil {
		return result{}, err
	}
	if err := waitChild(); err != nil {
		return result{}, fmt.Errorf("loaded instance: %w", err)
	}
	var child result
	if last := <-childLast; last != "" {
		_ = json.Unmarshal([]byte(last), &child)
	}
	p, c := own.Load(), childCount.Load()
	return result{
		Seconds:     elapsed.Seconds(),
		Concurrency: prefetch,
		Opts: fmt.Sprintf("qos=%s load=%s work_ms=%d prefetch=%d; healthy instance took %d (%.1f %%), loaded instance %d (%.1f %%); loaded: %s",
			qosOpt, load, workMs, prefetch, p, 100*float64(p)/float64(p+c), c, 100*float64(c)/float64(p+c), child.Opts),
	}, nil
}

// qosShareLoaded is the loaded instance of qos-share (started by it; not for direct
// use). It prints "ready" once it consumes and its load ran for a second, "count N"
// as it handles messages, and stops when its stdin closes.
func qosShareLoaded(ctx context.Context, cfg config) (result, error) {
	q := cfg.extra["queue"]
	if q == "" {
		return result{}, errors.New("qos-share-loaded is started by qos-share (needs -opt queue=NAME)")
	}
	withQoS, err := optBool(cfg, "qos", true)
	if err != nil {
		return result{}, err
	}
	workMs, err := cfg.optInt("work_ms", 2)
	if err != nil {
		return result{}, err
	}
	spin := calibrateSpinner(time.Duration(workMs) * time.Millisecond)

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop() }()

	var ballast []byte
	var spinners sync.WaitGroup
	switch optString(cfg, "load", "cpu") {
	case "memory":
		old := debug.SetMemoryLimit(256 << 20)
		defer debug.SetMemoryLimit(old)
		ballast = make([]byte, 190<<20)
		for i := 0; i < len(ballast); i += 4096 {
			ballast[i] = 1
		}
		runtime.GC()
	default:
		for i := 0; i < 2*runtime.GOMAXPROCS(0); i++ {
			spinners.Add(1)
			go func() {
				defer spinners.Done()
				s := spinner{iters: 10_000}
				for ctx.Err() == nil {
					s.spin()
				}
			}()
		}
	}
	defer spinners.Wait()

	var (
		count atomic.Int64
		outMu sync.Mutex
	)
	say := func(s string) { outMu.Lock(); fmt.Println(s); outMu.Unlock() }
	r := qosRun{url: cfg.url, queue: q, n: 0, prefetch: cfg.prefetch, name: "mmbench-qos-share-loaded",
		handler:  func(*message.Message) error { spin.spin(); return nil },
		progress: func(c int64) { count.Store(c) },
		ready: func() {
			go func() {
				select {
				case <-time.After(time.Second):
					say("ready")
				case <-ctx.Done():
				}
			}()
		}}
	if cfg.prefetch == 0 {
		r.prefetch = 100
	}
	if withQoS {
		r.limiter = &qos.Config{Prefetch: r.prefetch}
	}
	tickDone := make(chan struct{})
	go func() {
		defer close(tickDone)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				say("count " + strconv.FormatInt(count.Load(), 10))
			}
		}
	}()
	out, err := runQoSConsumer(ctx, r)
	<-tickDone
	say("count " + strconv.FormatInt(count.Load(), 10))
	runtime.KeepAlive(ballast)
	if err != nil {
		return result{}, err
	}
	return result{
		Seconds: out.elapsed.Seconds(),
		Opts: fmt.Sprintf("handled=%d limit max %d last %d, samples normal/pressure/stopped %d/%d/%d",
			out.handled, out.maxLimit, out.lastLim, out.states[qos.Normal], out.states[qos.Pressure], out.states[qos.Stopped]),
	}, nil
}
