package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/router"
)

func TestServicesElectOneLeader(t *testing.T) {
	url := testbroker.URL(t)
	name := testbroker.Name("elect")
	var svcs []*router.Service
	for range 3 {
		svc, err := router.New(name, router.Config{URL: url, Heartbeat: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := svc.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		t.Cleanup(func() { svc.Close() })
		svcs = append(svcs, svc)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		leaders, agree := 0, true
		for _, s := range svcs {
			if s.IsLeader() {
				leaders++
			}
			agree = agree && s.Leader() != "" && s.Leader() == svcs[0].Leader() && len(s.Peers()) == 3
		}
		if leaders == 1 && agree {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no agreement")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := svcs[0].Status(ctx, name)
	if err != nil || len(st.Members) != 3 || st.LeaderID != svcs[0].Leader() {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	// The leader closes: the others agree on a new one.
	var rest []*router.Service
	var leader *router.Service
	for _, s := range svcs {
		if s.IsLeader() {
			leader = s
		} else {
			rest = append(rest, s)
		}
	}
	leader.Close()
	for !(rest[0].IsLeader() != rest[1].IsLeader() && rest[0].Leader() == rest[1].Leader() && rest[0].Leader() != "") {
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatal("no new leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
