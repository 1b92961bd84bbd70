package main

// Peer status and the leader election of the contract service. The router facade runs
// both for every Service (heartbeats on internal.<service>.peer.alive at start, every
// 10 s and in answer to every peer.alive.req; the lock-queue election), as every Node
// micromessaging service does, so the kit's `status` check finds the members and one
// with a leaderId. serve only waits, before it says it is ready, until the Service
// knows its leader. No goroutine of this file outlives the call.

import (
	"context"
	"fmt"
	"time"

	"github.com/micromessaging/micromessaging/router"
)

// leaderTimeout bounds how long serve waits for the election after connecting.
const leaderTimeout = 30 * time.Second

// waitLeader returns once svc knows the leader of its service (itself or a peer).
func waitLeader(ctx context.Context, svc *router.Service) error {
	ctx, cancel := context.WithTimeout(ctx, leaderTimeout)
	defer cancel()
	for svc.Leader() == "" {
		select {
		case <-svc.Leadership():
		case <-ctx.Done():
			return fmt.Errorf("election: no leader known: %w", ctx.Err())
		}
	}
	return nil
}
