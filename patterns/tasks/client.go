package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/wire"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Publisher sends the tasks. Required. The topic it receives is the queue name
	// (q.requests.<service>.<route>); it must publish on the default exchange with
	// mandatory set (a returned message fails Publish with an error wrapping
	// ErrUnroutable), honour wire.MetaPersistent, and return once the broker confirmed
	// the message: rabbitmq.PublisherConfig{Mandatory: true} does all that.
	Publisher message.Publisher
	// Logger; nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer receives micromessaging_tasks_sent_total; nil: not registered.
	Registerer prometheus.Registerer
}

func (c *ClientConfig) setDefaults() {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every configuration problem at once.
func (c ClientConfig) Validate() error {
	var errs []error
	if c.Publisher == nil {
		errs = append(errs, errors.New("tasks: ClientConfig.Publisher is required"))
	}
	return errors.Join(errs...)
}

// Client sends tasks. It is safe for concurrent use.
type Client struct {
	pub    message.Publisher
	logger watermill.LoggerAdapter
	sent   *prometheus.CounterVec
	now    func() time.Time
}

// NewClient returns a Client. It does no I/O and starts no goroutine.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Client{pub: cfg.Publisher, logger: cfg.Logger, sent: newSentMetric(cfg.Registerer), now: time.Now}, nil
}

// Task sends body to one instance of service for route, as a Node peer does (WIRE.md,
// "Task"): to q.requests.<service>.<route> on the default exchange, persistent,
// mandatory, with headers idRequest (headers["idRequest"] if given, else a new UUID v4),
// the other user headers, and __mms {route, isTask: true, iat}; no correlationId,
// replyTo or expiration. It returns once the broker confirmed the task (it is then in
// the queue, on disk), or an error wrapping ErrUnroutable at once when no queue exists
// for the route, or ctx's error.
//
// body: json.RawMessage and []byte are sent as they are (they must be JSON); any other
// value is encoded with wire.JSON (nil is sent as ""). Header names starting with "mm.",
// "mms." or "__mms" are reserved.
func (c *Client) Task(ctx context.Context, service, route string, body any, headers map[string]string) error {
	if service == "" || route == "" {
		return fmt.Errorf("%w: a task needs a service and a route (got %q, %q)", ErrInvalid, service, route)
	}
	msg, err := c.newTask(ctx, route, body, headers)
	if err != nil {
		return err
	}
	err = c.pub.Publish(wire.RequestQueue(service, route), msg)
	switch {
	case err == nil:
		c.sent.WithLabelValues(route, SentOK).Inc()
		return nil
	case errors.Is(err, ErrUnroutable):
		c.sent.WithLabelValues(route, SentUnroutable).Inc()
	default:
		c.sent.WithLabelValues(route, SentError).Inc()
	}
	return fmt.Errorf("tasks: task %s.%s: %w", service, route, err)
}

func (c *Client) newTask(ctx context.Context, route string, body any, headers map[string]string) (*message.Message, error) {
	payload, err := encodeBody(body)
	if err != nil {
		return nil, err
	}
	msg := message.NewMessage(uuid.NewString(), payload)
	for k, v := range headers {
		if reservedHeader(k) {
			return nil, fmt.Errorf("%w: header %q uses a reserved name", ErrInvalid, k)
		}
		msg.Metadata.Set(k, v)
	}
	if msg.Metadata.Get(wire.HeaderIDRequest) == "" {
		msg.Metadata.Set(wire.HeaderIDRequest, uuid.NewString())
	}
	wire.MMS{Route: route, IsTask: true, IAT: c.now().UnixMilli()}.SetMetadata(msg.Metadata)
	msg.Metadata.Set(wire.MetaPersistent, "true")
	if ctx != nil {
		msg.SetContext(ctx)
	}
	return msg, nil
}
