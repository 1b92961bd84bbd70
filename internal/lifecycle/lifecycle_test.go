package lifecycle

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// An op acts on the Runner under test.
type op int

const (
	run        op = iota // Start; the run finishes when its context ends
	hang                 // Start; the run does not finish until the test ends
	closeLong            // Close with a timeout no run needs
	closeShort           // Close with a timeout a hanging run exceeds
)

func TestRunner(t *testing.T) {
	type step struct {
		op   op
		want error
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"run then close", []step{{run, nil}, {closeLong, nil}}},
		{"close before run", []step{{closeLong, nil}, {run, ErrClosed}}},
		{"close twice", []step{{run, nil}, {closeLong, nil}, {closeLong, nil}}},
		{"run twice", []step{{run, nil}, {run, ErrRunning}, {closeLong, nil}}},
		{"close times out when the run does not finish", []step{{hang, nil}, {closeShort, ErrTimeout}, {closeLong, nil}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Runner
			var wg sync.WaitGroup
			var hung []func()
			defer func() {
				for _, finish := range hung {
					finish()
				}
				wg.Wait()
			}()
			for i, s := range tt.steps {
				var err error
				switch s.op {
				case run, hang:
					var ctx context.Context
					var finish func()
					ctx, finish, err = r.Start(context.Background())
					if err != nil {
						if ctx != nil || finish != nil {
							t.Errorf("step %d: Start failed but returned a context or finish", i)
						}
						break
					}
					if s.op == hang {
						hung = append(hung, finish)
						break
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer finish()
						<-ctx.Done()
					}()
				case closeLong:
					err = r.Close(time.Minute)
				case closeShort:
					err = r.Close(20 * time.Millisecond)
				}
				if !errors.Is(err, s.want) {
					t.Fatalf("step %d: got error %v, want %v", i, err, s.want)
				}
			}
		})
	}
}

func TestStartDerivesFromParent(t *testing.T) {
	var r Runner
	parent, cancel := context.WithCancel(context.Background())
	ctx, finish, err := r.Start(parent)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-ctx.Done() // the run ends on its own when the parent ends
	finish()
	finish() // idempotent
	if err := r.Close(time.Minute); err != nil {
		t.Fatalf("Close after the run finished: %v", err)
	}
}
