package rabbitmq_test

import (
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

// suiteTest is one test function of Watermill's universal Pub/Sub suite.
type suiteTest struct {
	name string
	fn   func(*testing.T, tests.TestContext, tests.PubSubConstructor)
}

// TestPubSubSuite runs Watermill's universal Pub/Sub test suite (pubsub/tests) against
// the broker, in full mode, with features that describe the transport: a durable queue
// per topic (Persistent), competing consumers on it (no consumer groups), up to
// Prefetch=100 messages handled concurrently and nacks requeued later (no guaranteed
// order), at-least-once delivery.
//
// The suite's functions are called one by one, the way tests.TestPubSub calls them,
// rather than through tests.TestPubSub itself: TestPubSub also runs the tests the
// features rule out, which then call t.Skip, and a full run of this repository fails
// on skipped tests. Left out, because the features say so: TestPublishSubscribeInOrder
// and TestNoAck (GuaranteedOrder: run below with Prefetch 1, where they hold),
// TestConsumerGroups (ConsumerGroups), TestNewSubscriberReceivesOldMessages (a Kafka
// feature), TestReconnect (needs RestartServiceCommand; the broker restart is covered by
// TestBrokerRestart).
func TestPubSubSuite(t *testing.T) {
	features := tests.Features{
		ConsumerGroups:                      false,
		ExactlyOnceDelivery:                 false,
		GuaranteedOrder:                     false,
		GuaranteedOrderWithSingleSubscriber: false,
		Persistent:                          true,
		RequireSingleInstance:               false,
		NewSubscriberReceivesOldMessages:    false,
		ContextPreserved:                    false,
	}
	runSuite(t, "mmtest.suite", 0, features, []suiteTest{
		{"TestPublishSubscribe", tests.TestPublishSubscribe},
		{"TestConcurrentSubscribe", tests.TestConcurrentSubscribe},
		{"TestConcurrentSubscribeMultipleTopics", tests.TestConcurrentSubscribeMultipleTopics},
		{"TestResendOnError", tests.TestResendOnError},
		{"TestContinueAfterSubscribeClose", tests.TestContinueAfterSubscribeClose},
		{"TestConcurrentClose", tests.TestConcurrentClose},
		{"TestContinueAfterErrors", tests.TestContinueAfterErrors},
		{"TestPublisherClose", tests.TestPublisherClose},
		{"TestTopic", tests.TestTopic},
		{"TestMessageCtx", tests.TestMessageCtx},
		{"TestSubscribeCtx", tests.TestSubscribeCtx},
	})
}

// TestPubSubSuiteOrdered runs the suite's ordering tests with Prefetch 1: one message
// in flight per subscription, so a single subscriber sees messages in publish order and
// gets the next one only after acking the last.
func TestPubSubSuiteOrdered(t *testing.T) {
	features := tests.Features{
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
	}
	runSuite(t, "mmtest.suite1", 1, features, []suiteTest{
		{"TestPublishSubscribeInOrder", tests.TestPublishSubscribeInOrder},
		{"TestNoAck", tests.TestNoAck},
		{"TestPublishSubscribe", tests.TestPublishSubscribe},
	})
}

func runSuite(t *testing.T, prefix string, prefetch int, features tests.Features, fns []suiteTest) {
	testbroker.URL(t)
	// Cleanups run last-registered first: the queues are deleted after the connections
	// closed (so no subscription left running by a suite test declares one again), and
	// the admin connection closes after that.
	adm := newAdmin(t)
	var queues sync.Map
	t.Cleanup(func() {
		queues.Range(func(k, _ any) bool {
			if _, err := adm.channel().QueueDelete(k.(string), false, false, false); err != nil {
				t.Logf("delete queue %s: %v", k, err)
			}
			return true
		})
	})
	pubConn := connect(t, testbroker.Name(prefix+".pub"))
	subConn := connect(t, testbroker.Name(prefix+".sub"))

	features.GenerateTopicFunc = func(tctx tests.TestContext) string {
		return prefix + "." + string(tctx.TestID)
	}
	constructor := func(t *testing.T) (message.Publisher, message.Subscriber) {
		pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{
			Queue: func(topic string) rabbitmq.Queue {
				queues.Store(topic, true)
				return rabbitmq.Queue{Name: topic, Durable: true}
			},
			Prefetch: prefetch,
			// TestMessageCtx closes a subscriber holding an unacked message and expects
			// its context to end within 15 s: give up on unsettled messages sooner
			// than the 30 s default.
			CloseTimeout: 3 * time.Second,
			Logger:       testLogger(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return pub, sub
	}
	for _, st := range fns {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			id := tests.NewTestID()
			t.Run(string(id), func(t *testing.T) {
				st.fn(t, tests.TestContext{TestID: id, Features: features}, constructor)
			})
		})
	}
}
