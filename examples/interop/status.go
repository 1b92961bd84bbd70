package main

// Peer status and the leader election of the contract service, with peerstatus and
// patterns/election, as every Node micromessaging service runs them: heartbeats on
// internal.<service>.peer.alive (at start, every 10 s, and in answer to every
// peer.alive.req) and the lock-queue election, so the kit's `status` check finds the
// members and one with a leaderId.
//
// Until the router facade runs peer status and the election itself, this file builds
// them on a connection of its own (which also holds the election lock, so the lock goes
// with the process). The heartbeat subscriptions are consumed by the Tracker, not the
// Watermill router (see package peerstatus). The tracker and elector run until the
// process ends with serve: the broker then drops the connection, the lock and the
// exclusive queues.

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/election"
	"github.com/micromessaging/micromessaging/peerstatus"
	"github.com/micromessaging/micromessaging/rabbitmq"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

func init() { setups = append(setups, peerStatus) }

func peerStatus(svc *router.Service, st *State) error {
	service := svc.Name()
	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: urlFromArgs(), Name: "interop " + service + " peer status"})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		return err
	}
	x := rabbitmq.Exchange{Name: wire.EventExchange, Kind: "topic", Durable: true}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Exchange: wire.EventExchange, Declare: &x})
	if err != nil {
		return err
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Declare: []rabbitmq.Exchange{x}, NoAck: true,
		Queue: func(topic string) rabbitmq.Queue {
			return rabbitmq.Queue{Name: wire.ListenQueue(service, uuid.NewString()), Exclusive: true, AutoDelete: true,
				Bindings: []rabbitmq.Binding{{Exchange: wire.EventExchange, Key: topic}}}
		},
	})
	if err != nil {
		return err
	}
	tracker, err := peerstatus.New(peerstatus.Config{Service: service, InstanceID: svc.ID(), Publisher: pub, Subscriber: sub})
	if err != nil {
		return err
	}
	el, err := election.New(election.Config{Tracker: tracker, Locker: conn})
	if err != nil {
		return err
	}
	run := func(what string, fn func(context.Context) error) {
		if err := fn(context.Background()); err != nil {
			fmt.Fprintf(os.Stderr, "interop: %s: %v\n", what, err)
		}
	}
	go run("peer status", tracker.Run)
	go run("election", el.Run)
	// Be leader (or know the leader) before serve says it is ready.
	select {
	case <-el.Changes():
	case <-ctx.Done():
		return fmt.Errorf("election: no leader known: %w", ctx.Err())
	}
	return nil
}
