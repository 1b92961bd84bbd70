package rabbitmq

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeSender records acks and nacks and checks them as the broker would: a tag may be
// settled once; ack(multiple) needs its own tag outstanding and settles every
// outstanding tag up to it.
type fakeSender struct {
	mu      sync.Mutex
	settled map[uint64]string // tag -> "ack", "nack", "reject"
	frames  []string
	errs    []error
}

func newFakeSender() *fakeSender { return &fakeSender{settled: map[uint64]string{}} }

func (f *fakeSender) Ack(tag uint64, multiple bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, fmt.Sprintf("ack %d %v", tag, multiple))
	if _, done := f.settled[tag]; done {
		f.errs = append(f.errs, fmt.Errorf("PRECONDITION_FAILED - unknown delivery tag %d", tag))
		return nil
	}
	if !multiple {
		f.settled[tag] = "ack"
		return nil
	}
	for t := uint64(1); t <= tag; t++ {
		if _, done := f.settled[t]; !done {
			f.settled[t] = "ack"
		}
	}
	return nil
}

func (f *fakeSender) Nack(tag uint64, multiple, requeue bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, fmt.Sprintf("nack %d %v %v", tag, multiple, requeue))
	if _, done := f.settled[tag]; done {
		f.errs = append(f.errs, fmt.Errorf("PRECONDITION_FAILED - unknown delivery tag %d", tag))
		return nil
	}
	if requeue {
		f.settled[tag] = "nack"
	} else {
		f.settled[tag] = "reject"
	}
	return nil
}

func (f *fakeSender) snapshot() (map[uint64]string, []string, []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps(f.settled), slices.Clone(f.frames), slices.Clone(f.errs)
}

func maps(m map[uint64]string) map[uint64]string {
	out := make(map[uint64]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestAckerCoalescesInOrderAcks(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 50, time.Hour, time.Hour, nil)
	for tag := uint64(1); tag <= 100; tag++ {
		a.ack(tag)
	}
	_, frames, errs := f.snapshot()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	want := []string{"ack 50 true", "ack 100 true"}
	if !slices.Equal(frames, want) {
		t.Fatalf("frames %v, want %v", frames, want)
	}
}

func TestAckerFlushesAfterDelay(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 50, 5*time.Millisecond, time.Hour, nil)
	defer a.close(false)
	a.ack(2)
	a.ack(1)
	a.ack(3)
	deadline := time.Now().Add(5 * time.Second)
	for {
		settled, frames, _ := f.snapshot()
		if len(settled) == 3 {
			if !slices.Equal(frames, []string{"ack 3 true"}) {
				t.Fatalf("frames %v", frames)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not flushed: %v", frames)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAckerNackDoesNotEndAMultipleAck(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 3, time.Hour, -1, nil) // nack delay < 0: requeue at once
	a.ack(1)
	a.ack(2)
	a.nack(3) // prefix 1..3 settled, but 3 was nacked: the ack must stop at 2
	a.close(true)
	settled, frames, errs := f.snapshot()
	if len(errs) > 0 {
		t.Fatal(errs, frames)
	}
	if settled[1] != "ack" || settled[2] != "ack" || settled[3] != "nack" {
		t.Fatalf("settled %v (frames %v)", settled, frames)
	}
}

func TestAckerDelayedNackHoldsThePrefix(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 2, time.Hour, 20*time.Millisecond, nil)
	defer a.close(false)
	start := time.Now()
	a.nack(1)
	a.ack(2)
	a.ack(3)
	// The ack of 2 and 3 cannot be a multiple ack (it would ack 1): they wait for the
	// requeue of 1 or are sent one by one.
	settled, frames, _ := f.snapshot()
	if settled[1] != "" {
		t.Fatalf("tag 1 settled before the nack delay: %v", frames)
	}
	deadline := time.Now().Add(5 * time.Second)
	for settled[1] == "" || len(settled) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("not settled: %v", frames)
		}
		time.Sleep(time.Millisecond)
		settled, frames, _ = f.snapshot()
	}
	if settled[1] != "nack" || settled[2] != "ack" || settled[3] != "ack" {
		t.Fatalf("settled %v (frames %v)", settled, frames)
	}
	if d := time.Since(start); d < 15*time.Millisecond {
		t.Fatalf("nack requeued after %s, before the delay", d)
	}
	if _, _, errs := f.snapshot(); len(errs) > 0 {
		t.Fatal(errs)
	}
}

func TestAckerSlowMessageDoesNotStallTheWindow(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 4, time.Millisecond, time.Hour, nil)
	defer a.close(false)
	for tag := uint64(2); tag <= 9; tag++ { // tag 1 is still in a handler
		a.ack(tag)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		settled, frames, _ := f.snapshot()
		if len(settled) == 8 {
			if settled[1] != "" {
				t.Fatalf("tag 1 settled: %v", frames)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acks above a slow message not sent: %v", frames)
		}
		time.Sleep(time.Millisecond)
	}
	a.ack(1)
	a.ack(10)
	a.close(true)
	settled, frames, errs := f.snapshot()
	if len(errs) > 0 {
		t.Fatal(errs, frames)
	}
	if len(settled) != 10 {
		t.Fatalf("settled %v (frames %v)", settled, frames)
	}
}

func TestAckerRejectAndRelease(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 10, time.Hour, time.Hour, nil)
	a.reject(1)
	a.release(2)
	a.ack(3)
	a.close(true)
	settled, frames, errs := f.snapshot()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	want := map[uint64]string{1: "reject", 2: "nack", 3: "ack"}
	for tag, w := range want {
		if settled[tag] != w {
			t.Fatalf("tag %d: %q, want %q (frames %v)", tag, settled[tag], w, frames)
		}
	}
}

func TestAckerCloseSendsDelayedNacks(t *testing.T) {
	f := newFakeSender()
	a := newAcker(f, 10, time.Hour, time.Hour, nil)
	a.nack(1)
	a.ack(2)
	a.close(true)
	settled, frames, errs := f.snapshot()
	if len(errs) > 0 || settled[1] != "nack" || settled[2] != "ack" {
		t.Fatalf("settled %v frames %v errs %v", settled, frames, errs)
	}
	a.ack(3) // after close: no-op
	if _, frames2, _ := f.snapshot(); len(frames2) != len(frames) {
		t.Fatalf("frame after close: %v", frames2)
	}
}

// TestAckerRandomOrder settles 10,000 tags in random order with acks and nacks from
// concurrent goroutines and checks that every tag is settled exactly once, as it was
// settled. With immediate nacks the acks are coalesced (far fewer ack frames than
// messages). A delayed nack holds its tag, so acks after it cannot be covered by an
// ack(multiple) until it is requeued: they go one by one when they pile up, which is
// only checked for correctness.
func TestAckerRandomOrder(t *testing.T) {
	for _, delayed := range []bool{false, true} {
		t.Run(fmt.Sprintf("delayed_nacks=%v", delayed), func(t *testing.T) {
			nackDelay := time.Duration(-1)
			if delayed {
				nackDelay = time.Millisecond
			}
			testAckerRandomOrder(t, nackDelay, !delayed)
		})
	}
}

func testAckerRandomOrder(t *testing.T, nackDelay time.Duration, checkCoalescing bool) {
	f := newFakeSender()
	a := newAcker(f, 50, time.Millisecond, nackDelay, nil)
	const n = 10000
	want := make(map[uint64]string, n)
	tags := make([]uint64, n)
	for i := range tags {
		tags[i] = uint64(i + 1)
		if rand.IntN(20) == 0 {
			want[tags[i]] = "nack"
		} else {
			want[tags[i]] = "ack"
		}
	}
	// Windows of 100 in flight, shuffled inside the window (like concurrent handlers).
	var wg sync.WaitGroup
	for start := 0; start < n; start += 100 {
		win := slices.Clone(tags[start : start+100])
		rand.Shuffle(len(win), func(i, j int) { win[i], win[j] = win[j], win[i] })
		for _, part := range [][]uint64{win[:50], win[50:]} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, tag := range part {
					if want[tag] == "nack" {
						a.nack(tag)
					} else {
						a.ack(tag)
					}
				}
			}()
		}
		wg.Wait()
	}
	time.Sleep(20 * time.Millisecond) // let delayed nacks fire
	a.close(true)
	settled, frames, errs := f.snapshot()
	if len(errs) > 0 {
		t.Fatalf("%d broker errors, first %v", len(errs), errs[0])
	}
	for tag, w := range want {
		if settled[tag] != w {
			t.Fatalf("tag %d settled %q, want %q", tag, settled[tag], w)
		}
	}
	acks := 0
	for _, fr := range frames {
		if fr[:3] == "ack" {
			acks++
		}
	}
	t.Logf("%d messages, %d ack frames, %d frames in all", n, acks, len(frames))
	if checkCoalescing && acks > n/4 {
		t.Fatalf("%d ack frames for %d messages: acks are not coalesced", acks, n)
	}
}
