package rabbitmq

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Exchange is an exchange declaration. Declaring is idempotent: an exchange that exists
// with the same settings is left as it is; one that exists with other settings makes the
// broker close the channel with 406 PRECONDITION_FAILED (reported as an error).
type Exchange struct {
	Name string // required
	// Kind is the exchange type: "direct", "fanout", "topic" or "headers". Required.
	Kind       string
	Durable    bool // survives a broker restart
	AutoDelete bool // deleted when its last binding goes
	Internal   bool // cannot be published to directly
	Args       amqp.Table
}

func (e Exchange) validate() error {
	var errs []error
	if e.Name == "" {
		errs = append(errs, errors.New("rabbitmq: Exchange.Name is empty"))
	}
	if e.Kind == "" {
		errs = append(errs, fmt.Errorf("rabbitmq: exchange %q: Kind is empty", e.Name))
	}
	return errors.Join(errs...)
}

func (e Exchange) declare(ch *amqp.Channel) error {
	if err := ch.ExchangeDeclare(e.Name, e.Kind, e.Durable, e.AutoDelete, e.Internal, false, e.Args); err != nil {
		return fmt.Errorf("rabbitmq: declare exchange %q: %w", e.Name, err)
	}
	return nil
}

// Binding binds a queue to an exchange with a binding key (topic patterns with * and #
// on a topic exchange).
type Binding struct {
	Exchange string
	Key      string
	Args     amqp.Table
}

// Queue is a queue declaration with its bindings. Declaring is idempotent: an existing
// queue with the same durable/exclusive/auto-delete flags and arguments is reused (an
// integer argument matches whatever width it was declared with, so x-expires as int32
// or int64 both match a queue a Node peer declared). Different settings make the broker
// refuse with 406 PRECONDITION_FAILED.
type Queue struct {
	// Name of the queue. "" lets the broker choose a name (a new one after every
	// reconnect); only useful for exclusive queues nobody else addresses by name.
	Name string
	// Durable queues survive a broker restart (with their persistent messages).
	Durable bool
	// Exclusive queues belong to the connection that declared them and are deleted when
	// it closes; another connection declaring or consuming one gets 405
	// RESOURCE_LOCKED. After a reconnect the queue is declared again on the new
	// connection (retried with backoff while the broker still holds the old one).
	Exclusive bool
	// AutoDelete queues are deleted when their last consumer goes.
	AutoDelete bool
	// Args are the x-arguments, e.g. wire.RequestQueueArgs() (x-expires),
	// x-dead-letter-exchange, x-queue-type.
	Args amqp.Table
	// Bindings to declare after the queue (their exchanges must exist or be declared
	// with SubscriberConfig.Declare).
	Bindings []Binding
}

// declare declares the queue and its bindings and returns the queue's name (the
// broker's choice when Name is empty).
func (q Queue) declare(ch *amqp.Channel) (string, error) {
	dq, err := ch.QueueDeclare(q.Name, q.Durable, q.AutoDelete, q.Exclusive, false, q.Args)
	if err != nil {
		return "", fmt.Errorf("rabbitmq: declare queue %q: %w", q.Name, err)
	}
	for _, b := range q.Bindings {
		if err := ch.QueueBind(dq.Name, b.Key, b.Exchange, false, b.Args); err != nil {
			return "", fmt.Errorf("rabbitmq: bind queue %q to exchange %q with key %q: %w", dq.Name, b.Exchange, b.Key, err)
		}
	}
	return dq.Name, nil
}

// declareTopology declares the exchanges, then the queue and its bindings.
func declareTopology(ch *amqp.Channel, exchanges []Exchange, q Queue) (string, error) {
	for _, e := range exchanges {
		if err := e.declare(ch); err != nil {
			return "", err
		}
	}
	return q.declare(ch)
}
