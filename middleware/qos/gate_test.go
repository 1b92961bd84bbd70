package qos

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// acquireAsync starts an acquire and returns a channel with its error.
func acquireAsync(ctx context.Context, g *gate, n uint64) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := g.acquire(ctx, n)
		ch <- err
	}()
	return ch
}

func TestGateCountLimit(t *testing.T) {
	g := newGate(2, 0)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if w, err := g.acquire(ctx, 1); err != nil || w != 0 {
			t.Fatalf("acquire %d: waited %v, err %v", i, w, err)
		}
	}
	third := acquireAsync(ctx, g, 1)
	eventually(t, "third acquire queued", func() bool { return g.waiting.Load() == 1 })
	select {
	case err := <-third:
		t.Fatalf("third acquire passed a full gate: %v", err)
	default:
	}
	g.release(1)
	if err := <-third; err != nil {
		t.Fatal(err)
	}
	if n, b := g.inFlight(); n != 2 || b != 2 {
		t.Fatalf("in flight = %d msgs %d bytes, want 2, 2", n, b)
	}
	if !g.takeWaited() || g.takeWaited() {
		t.Fatal("takeWaited: want true once, then false")
	}
}

func TestGateBytes(t *testing.T) {
	g := newGate(100, 10)
	ctx := context.Background()
	if _, err := g.acquire(ctx, 6); err != nil {
		t.Fatal(err)
	}
	second := acquireAsync(ctx, g, 6)
	eventually(t, "second acquire queued on bytes", func() bool { return g.waiting.Load() == 1 })
	g.release(6)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	g.release(6)

	// A message larger than the byte limit runs, but alone.
	if _, err := g.acquire(ctx, 50); err != nil {
		t.Fatal(err)
	}
	small := acquireAsync(ctx, g, 1)
	eventually(t, "small acquire queued behind the big one", func() bool { return g.waiting.Load() == 1 })
	g.release(50)
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	g.release(1)
	if n, b := g.inFlight(); n != 0 || b != 0 {
		t.Fatalf("in flight = %d, %d; want 0, 0", n, b)
	}
}

func TestGateFIFO(t *testing.T) {
	g := newGate(1, 0)
	ctx := context.Background()
	if _, err := g.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := g.acquire(ctx, 0); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			g.release(0)
		}()
		eventually(t, "waiter queued", func() bool { return g.waiting.Load() == int64(i+1) })
	}
	g.release(0)
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("served in order %v, want FIFO", order)
		}
	}
}

func TestGateCancel(t *testing.T) {
	g := newGate(1, 0)
	if _, err := g.acquire(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := acquireAsync(ctx, g, 3)
	eventually(t, "queued", func() bool { return g.waiting.Load() == 1 })
	cancel()
	if err := <-ch; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if g.waiting.Load() != 0 {
		t.Fatal("canceled waiter still queued")
	}
	g.release(5)
	if n, b := g.inFlight(); n != 0 || b != 0 {
		t.Fatalf("a canceled acquire holds %d, %d", n, b)
	}
}

func TestGateSetLimit(t *testing.T) {
	g := newGate(0, 0)
	ctx := context.Background()
	a, b := acquireAsync(ctx, g, 0), acquireAsync(ctx, g, 0)
	eventually(t, "both queued at limit 0", func() bool { return g.waiting.Load() == 2 })
	g.setLimit(1)
	first := func() error {
		select {
		case err := <-a:
			return err
		case err := <-b:
			return err
		}
	}()
	if first != nil {
		t.Fatal(first)
	}
	if g.waiting.Load() != 1 {
		t.Fatalf("limit 1 served %d waiters", 2-g.waiting.Load())
	}
	g.setLimit(2)
	eventually(t, "second served after limit 2", func() bool { return g.waiting.Load() == 0 })
	if n, _ := g.inFlight(); n != 2 {
		t.Fatalf("in flight %d, want 2", n)
	}
}

func TestGateClose(t *testing.T) {
	g := newGate(0, 0)
	ch := acquireAsync(context.Background(), g, 0)
	eventually(t, "queued", func() bool { return g.waiting.Load() == 1 })
	g.close()
	if err := <-ch; !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if _, err := g.acquire(context.Background(), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after close: %v, want ErrClosed", err)
	}
	g.setLimit(5)
	if _, err := g.acquire(context.Background(), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("setLimit reopened a closed gate: %v", err)
	}
}

// TestGateStress hammers a gate whose limit changes under it and checks that the
// number of holders never exceeds the largest limit in force and that nothing leaks.
func TestGateStress(t *testing.T) {
	g := newGate(3, 40)
	var holders, peak atomic.Int64
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < 2000; i++ {
				n := uint64(r.IntN(20))
				cctx := ctx
				var cancel context.CancelFunc = func() {}
				if i%7 == 0 {
					cctx, cancel = context.WithTimeout(ctx, time.Duration(r.IntN(50))*time.Microsecond)
				}
				if _, err := g.acquire(cctx, n); err != nil {
					cancel()
					continue
				}
				cancel()
				h := holders.Add(1)
				for {
					p := peak.Load()
					if h <= p || peak.CompareAndSwap(p, h) {
						break
					}
				}
				holders.Add(-1)
				g.release(n)
			}
		}()
	}
	var changer sync.WaitGroup
	changer.Add(1)
	go func() {
		defer changer.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			g.setLimit(1 + i%4)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	wg.Wait()
	close(stop)
	changer.Wait()
	if p := peak.Load(); p > 4 {
		t.Fatalf("peak holders %d above the largest limit 4", p)
	}
	if n, b := g.inFlight(); n != 0 || b != 0 {
		t.Fatalf("leaked %d slots, %d bytes", n, b)
	}
}
