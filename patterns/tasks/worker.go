package tasks

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/micromessaging/micromessaging/wire"
)

// Defaults of WorkerConfig.
const (
	DefaultMaxAttempts    = 5
	DefaultInitialBackoff = time.Second
	DefaultMaxBackoff     = 5 * time.Minute
	DefaultMultiplier     = 2.0
	// DefaultMaxDuration stays below RabbitMQ's default consumer_timeout (30 min), after
	// which the broker closes the channel of a consumer that holds a delivery unacked.
	DefaultMaxDuration  = 25 * time.Minute
	DefaultCloseTimeout = 30 * time.Second
	// MaxMaxAttempts bounds WorkerConfig.MaxAttempts: the worker declares a retry queue
	// per attempt number.
	MaxMaxAttempts = 100
)

// timeoutGrace is how long the worker still waits for a handler whose ctx was cancelled
// at MaxDuration before it gives up on it and retries the task.
const timeoutGrace = time.Second

// maxErrorHeader bounds HeaderError.
const maxErrorHeader = 1024

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Service is the service whose task routes the worker handles. Required.
	Service string
	// Publisher publishes the retry and dead-letter copies: default exchange, topic =
	// queue name, mandatory, confirmed, honouring wire.MetaPersistent and
	// wire.MetaExpiration (rabbitmq.PublisherConfig{Mandatory: true}). Required.
	Publisher message.Publisher
	// Channels declares the retry and dead-letter queues (durable) before the first
	// copy goes there. Required; *rabbitmq.Connection satisfies it.
	Channels ChannelOpener

	// MaxAttempts bounds the attempts per task, the first one included; after the last
	// failed one the task is dead-lettered. 0 means DefaultMaxAttempts (5); 1 means no
	// retry. At most MaxMaxAttempts (100): each attempt number has a retry queue.
	MaxAttempts int
	// InitialBackoff is the delay before attempt 2. 0 means DefaultInitialBackoff (1 s).
	InitialBackoff time.Duration
	// MaxBackoff caps the delay. 0 means DefaultMaxBackoff (5 min).
	MaxBackoff time.Duration
	// Multiplier grows the delay per attempt: delay(n) = InitialBackoff * Multiplier^(n-1)
	// after failed attempt n. 0 means DefaultMultiplier (2).
	Multiplier float64
	// Jitter randomizes each delay by up to ±Jitter of it (0.2 = ±20 %). 0 means none.
	Jitter float64

	// MaxDuration bounds one attempt: the handler's ctx is cancelled then, and if the
	// handler does not return within a second the task counts as failed (reason
	// "timeout") and is retried; the handler's goroutine is left to finish on its own.
	// Keep it below the broker's consumer_timeout (see the package doc). 0 means
	// DefaultMaxDuration (25 min).
	MaxDuration time.Duration
	// CloseTimeout bounds how long Close waits for running handlers. 0 means
	// DefaultCloseTimeout (30 s).
	CloseTimeout time.Duration

	// Logger; nil means watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// Registerer receives the micromessaging_tasks_* worker metrics; nil: not
	// registered.
	Registerer prometheus.Registerer
}

func (c *WorkerConfig) setDefaults() {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.InitialBackoff == 0 {
		c.InitialBackoff = DefaultInitialBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Multiplier == 0 {
		c.Multiplier = DefaultMultiplier
	}
	if c.MaxDuration == 0 {
		c.MaxDuration = DefaultMaxDuration
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every configuration problem at once. Call it after the defaults
// are applied (NewWorker does).
func (c WorkerConfig) Validate() error {
	var errs []error
	if c.Service == "" {
		errs = append(errs, errors.New("tasks: WorkerConfig.Service is required"))
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("tasks: WorkerConfig.Publisher is required"))
	}
	if c.Channels == nil {
		errs = append(errs, errors.New("tasks: WorkerConfig.Channels is required"))
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > MaxMaxAttempts {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.MaxAttempts %d: want 1..%d (a retry queue per attempt number)", c.MaxAttempts, MaxMaxAttempts))
	}
	if c.InitialBackoff < time.Millisecond {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.InitialBackoff %v: want >= 1ms", c.InitialBackoff))
	}
	if c.MaxBackoff < c.InitialBackoff {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.MaxBackoff %v: want >= InitialBackoff %v", c.MaxBackoff, c.InitialBackoff))
	}
	if c.MaxBackoff > time.Duration(math.MaxUint32)*time.Millisecond {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.MaxBackoff %v: over the broker's expiration limit", c.MaxBackoff))
	}
	if !(c.Multiplier >= 1) { // also NaN
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.Multiplier %v: want >= 1", c.Multiplier))
	}
	if !(c.Jitter >= 0 && c.Jitter < 1) { // also NaN
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.Jitter %v: want 0 <= Jitter < 1", c.Jitter))
	}
	if c.MaxDuration < 0 {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.MaxDuration %v: want > 0", c.MaxDuration))
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, fmt.Errorf("tasks: WorkerConfig.CloseTimeout %v: want > 0", c.CloseTimeout))
	}
	return errors.Join(errs...)
}

// ErrCloseTimeout: Close gave up waiting for handlers that are still running.
var ErrCloseTimeout = errors.New("tasks: close timed out waiting for running handlers")

// Worker turns task handlers into Watermill handlers that never requeue a failed task
// in a loop: a failure (error, panic, or MaxDuration exceeded) is retried through a
// delay queue with exponential backoff, and dead-lettered after MaxAttempts. It is safe
// for concurrent use.
type Worker struct {
	cfg     WorkerConfig
	logger  watermill.LoggerAdapter
	metrics *workerMetrics

	// closing is cancelled by Close: it ends backoff waits and publish retries.
	closing   context.Context
	stop      context.CancelFunc
	closeOnce sync.Once
	running   sync.WaitGroup // handler goroutines, abandoned ones included

	mu       sync.Mutex
	declared map[string]bool // routes whose retry and dead queues are declared
}

// NewWorker returns a Worker. It does no I/O and starts no goroutine.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	closing, stop := context.WithCancel(context.Background())
	return &Worker{
		cfg:      cfg,
		logger:   cfg.Logger.With(watermill.LogFields{"component": "tasks", "service": cfg.Service}),
		metrics:  newWorkerMetrics(cfg.Registerer),
		closing:  closing,
		stop:     stop,
		declared: map[string]bool{},
	}, nil
}

// Topic returns the topic to subscribe to for route: its request queue,
// q.requests.<service>.<route>. The subscriber must declare it exactly as Node does:
// durable, not exclusive, not auto-delete, arguments wire.RequestQueueArgs() and no
// other (a different declaration fails with 406 PRECONDITION_FAILED when a Node peer
// declared it first, and the reverse).
func (w *Worker) Topic(route string) string { return wire.RequestQueue(w.cfg.Service, route) }

// Backoff returns the delay before attempt n+1 after failed attempt n (n >= 1), without
// jitter.
func (w *Worker) Backoff(n int) time.Duration {
	d := float64(w.cfg.InitialBackoff) * math.Pow(w.cfg.Multiplier, float64(n-1))
	if d > float64(w.cfg.MaxBackoff) || math.IsInf(d, 0) || math.IsNaN(d) {
		return w.cfg.MaxBackoff
	}
	return time.Duration(d)
}

func (w *Worker) jittered(d time.Duration) time.Duration {
	if w.cfg.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + w.cfg.Jitter*(2*rand.Float64()-1)))
	}
	return max(d, time.Millisecond)
}

// Handler wraps fn, the handler of route, for a Watermill router:
//
//	router.AddConsumerHandler("tasks."+route, worker.Topic(route), subscriber, worker.Handler(route, fn))
//
// fn gets the task with msg.Context() cancelled at MaxDuration; Attempt(msg) tells which
// attempt it is. When fn returns nil the task is acked. When it fails (returns an
// error, panics, or overruns MaxDuration), a copy of the task goes to
// RetryQueue(service, route, n) with the backoff as expiration, or after the last
// attempt to DeadQueue(service, route); only once the broker confirmed the copy is the
// original acked, so a crash in between can duplicate a task but never lose it. If the
// copy cannot be published the original is nacked after a pause of up to 5 s (the
// broker keeps it) and the wrapped handler returns the error. When the delivery's own
// ctx (msg.Context()) ends while fn runs, that is when its channel was lost, the
// failure publishes no copy: the original is nacked (the broker redelivers it anyway)
// and the attempt does not count.
func (w *Worker) Handler(route string, fn message.NoPublishHandlerFunc) message.NoPublishHandlerFunc {
	m := w.metrics
	for _, o := range []string{OutcomeSuccess, OutcomeRetry, OutcomeDeadLetter, OutcomeRequeue} {
		m.handled.WithLabelValues(route, o)
	}
	m.retries.WithLabelValues(route)
	m.dead.WithLabelValues(route)
	return func(msg *message.Message) error {
		start := time.Now()
		attempt := Attempt(msg)
		reason, ferr := w.run(route, msg, fn)
		outcome := OutcomeSuccess
		var err error
		switch {
		case ferr == nil:
		case msg.Context().Err() != nil:
			// The delivery itself was cancelled (its channel was lost, or the subscriber
			// gave up on it at close): the broker redelivers it, so a retry copy would
			// duplicate the task and burn an attempt. Nack it; the attempt does not count.
			outcome = OutcomeRequeue
			err = fmt.Errorf("tasks: delivery of %s cancelled during attempt %d: %w", route, attempt, ferr)
			w.logger.Info("Task delivery cancelled while it ran; the broker redelivers it",
				watermill.LogFields{"route": route, "message_uuid": msg.UUID, "attempt": attempt, "error": ferr.Error()})
		default:
			m.failures.WithLabelValues(route, reason).Inc()
			outcome, err = w.fail(route, msg, attempt, ferr)
		}
		m.handled.WithLabelValues(route, outcome).Inc()
		m.seconds.WithLabelValues(route, outcome).Observe(time.Since(start).Seconds())
		return err
	}
}

// run calls fn on a goroutine of its own with a copy of msg whose ctx ends at
// MaxDuration, and turns a panic into an error. It returns the failure and its reason.
func (w *Worker) run(route string, msg *message.Message, fn message.NoPublishHandlerFunc) (reason string, err error) {
	parent := msg.Context()
	ctx, cancel := context.WithTimeout(parent, w.cfg.MaxDuration)
	defer cancel()
	// fn gets a copy: a handler abandoned after MaxDuration may still read it while the
	// worker publishes the original's copy, and it cannot ack or nack the delivery.
	task := msg.Copy()
	task.SetContext(ctx)

	type result struct {
		err      error
		panicked bool
	}
	done := make(chan result, 1)
	var mu sync.Mutex
	finished, abandoned := false, false
	gauge := w.metrics.abandoned.WithLabelValues(route)
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		var r result
		defer func() {
			if p := recover(); p != nil {
				r = result{err: fmt.Errorf("%w: %v", ErrPanic, p), panicked: true}
			}
			done <- r
			mu.Lock()
			finished = true
			if abandoned {
				gauge.Dec()
			}
			mu.Unlock()
		}()
		r.err = fn(task)
	}()

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		grace := time.NewTimer(timeoutGrace)
		select {
		case r = <-done:
			grace.Stop()
		case <-grace.C:
			mu.Lock()
			if !finished {
				abandoned = true
				gauge.Inc()
			}
			mu.Unlock()
			if parent.Err() != nil {
				// The delivery itself was cancelled (shutdown), not timed out.
				return ReasonError, fmt.Errorf("tasks: handler did not return after cancellation: %w", parent.Err())
			}
			w.logger.Error("Task handler overran MaxDuration; retrying the task", ErrMaxDuration,
				watermill.LogFields{"route": route, "message_uuid": msg.UUID, "max_duration": w.cfg.MaxDuration})
			return ReasonTimeout, fmt.Errorf("%w (%v)", ErrMaxDuration, w.cfg.MaxDuration)
		}
	}
	switch {
	case r.panicked:
		return ReasonPanic, r.err
	case r.err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil:
		return ReasonTimeout, fmt.Errorf("%w (%v): %w", ErrMaxDuration, w.cfg.MaxDuration, r.err)
	case r.err != nil:
		return ReasonError, r.err
	}
	return "", nil
}

// fail publishes the retry or dead-letter copy of a failed task. It returns the
// outcome, and an error only when the copy could not be published (the delivery is
// then nacked by the router).
func (w *Worker) fail(route string, msg *message.Message, attempt int, ferr error) (string, error) {
	fields := watermill.LogFields{"route": route, "message_uuid": msg.UUID, "attempt": attempt}
	out := failedCopy(msg, ferr)
	var topic, outcome string
	var delay time.Duration
	if attempt < w.cfg.MaxAttempts {
		delay = w.jittered(w.Backoff(attempt))
		topic, outcome = RetryQueue(w.cfg.Service, route, attempt), OutcomeRetry
		out.Metadata.Set(HeaderAttempt, strconv.Itoa(attempt+1))
		out.Metadata.Set(wire.MetaExpiration, strconv.FormatInt(max(delay.Milliseconds(), 1), 10))
	} else {
		topic, outcome = DeadQueue(w.cfg.Service, route), OutcomeDeadLetter
		out.Metadata.Set(HeaderAttempt, strconv.Itoa(attempt))
	}
	if err := w.publish(route, topic, out); err != nil {
		w.logger.Error("Cannot publish the copy of a failed task; nacking it", err, fields.Add(watermill.LogFields{"queue": topic}))
		pause := min(w.Backoff(attempt), 5*time.Second)
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-w.closing.Done():
			t.Stop()
		}
		return OutcomeRequeue, fmt.Errorf("tasks: publish to %s: %w", topic, err)
	}
	if outcome == OutcomeRetry {
		w.metrics.retries.WithLabelValues(route).Inc()
		w.logger.Info("Task failed; retrying", fields.Add(watermill.LogFields{"error": ferr.Error(), "delay": delay}))
	} else {
		w.metrics.dead.WithLabelValues(route).Inc()
		w.logger.Error("Task failed its last attempt; dead-lettered", ferr, fields.Add(watermill.LogFields{"queue": topic}))
	}
	return outcome, nil
}

// failedCopy returns the copy of a failed task to publish: same UUID, payload, __mms
// fields, idRequest and user headers; persistent; without the properties of the
// delivery (routing key, redelivered...) and the broker's dead-lettering headers.
func failedCopy(msg *message.Message, ferr error) *message.Message {
	out := message.NewMessage(msg.UUID, msg.Payload)
	for k, v := range msg.Metadata {
		if strings.HasPrefix(k, wire.MetaPrefix) || k == "x-death" || strings.HasPrefix(k, "x-first-death-") ||
			strings.HasPrefix(k, "x-last-death-") || k == HeaderAttempt || k == HeaderError {
			continue
		}
		out.Metadata[k] = v
	}
	out.Metadata.Set(wire.MetaPersistent, "true")
	text := ferr.Error()
	if len(text) > maxErrorHeader {
		text = text[:maxErrorHeader]
	}
	out.Metadata.Set(HeaderError, text)
	return out
}

// publish sends out to topic with a confirm, declaring the route's retry and dead
// queues first (once, and again when the broker returns the copy as unroutable).
func (w *Worker) publish(route, topic string, out *message.Message) error {
	ctx, cancel := context.WithTimeout(w.closing, time.Minute)
	defer cancel()
	out.SetContext(ctx)
	if err := w.declare(ctx, route, false); err != nil {
		return err
	}
	err := w.cfg.Publisher.Publish(topic, out)
	if errors.Is(err, wire.ErrUnroutable) { // deleted behind our back: declare again
		if err := w.declare(ctx, route, true); err != nil {
			return err
		}
		err = w.cfg.Publisher.Publish(topic, out)
	}
	return err
}

// declare declares RetryQueue(service, route, 1..MaxAttempts-1) and DeadQueue(service,
// route) unless done before (or force).
func (w *Worker) declare(ctx context.Context, route string, force bool) error {
	w.mu.Lock()
	done := w.declared[route]
	w.mu.Unlock()
	if done && !force {
		return nil
	}
	ch, err := w.cfg.Channels.Channel(ctx)
	if err != nil {
		return fmt.Errorf("tasks: declare queues of %s: %w", route, err)
	}
	defer ch.Close()
	for n := 1; n < w.cfg.MaxAttempts; n++ {
		q := RetryQueue(w.cfg.Service, route, n)
		if _, err := ch.QueueDeclare(q, true, false, false, false, retryQueueArgs(w.cfg.Service, route)); err != nil {
			return fmt.Errorf("tasks: declare %s: %w", q, err)
		}
	}
	q := DeadQueue(w.cfg.Service, route)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		return fmt.Errorf("tasks: declare %s: %w", q, err)
	}
	w.mu.Lock()
	w.declared[route] = true
	w.mu.Unlock()
	return nil
}

// Close stops backoff pauses and waits (up to CloseTimeout) for running handlers,
// including handlers abandoned after MaxDuration. Close the router first: Close does
// not stop deliveries. Close is idempotent.
func (w *Worker) Close() error {
	w.closeOnce.Do(w.stop)
	done := make(chan struct{})
	go func() { w.running.Wait(); close(done) }()
	t := time.NewTimer(w.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return ErrCloseTimeout
	}
}
