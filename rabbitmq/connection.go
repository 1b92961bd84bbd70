package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker used when ConnectionConfig.URL and $RABBIT_URI are empty.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// State is the state of a Connection.
type State int32

// The states of a Connection. A Connection starts Disconnected, is Connecting while it
// dials, Connected while it has a live AMQP connection, and Closed after Close (final).
const (
	Disconnected State = iota
	Connecting
	Connected
	Closed
)

func (s State) String() string {
	switch s {
	case Disconnected:
		return "disconnected"
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// ConnectionConfig configures a Connection. The zero value connects to $RABBIT_URI or
// DefaultURL.
type ConnectionConfig struct {
	// URL of the broker (amqp:// or amqps://). "" means $RABBIT_URI, and DefaultURL when
	// that is empty too.
	URL string
	// Name is the client connection name shown by the broker (rabbitmqctl
	// list_connections client_properties, the management UI) and the value of the
	// "connection" label of the metrics. "" means "micromessaging".
	Name string
	// Heartbeat is the AMQP heartbeat interval; a broker that goes silent without
	// closing the socket is noticed after 1.5 intervals (amqp091's read deadline), and
	// the broker drops a silent client after two. 0 means 10 s. A heartbeat in the URL
	// takes precedence.
	Heartbeat time.Duration
	// DialTimeout bounds one dial (TCP, TLS and AMQP handshake). 0 means 10 s.
	DialTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between reconnect attempts: it doubles
	// from BackoffMin up to BackoffMax, with jitter (each wait is 50-100 % of the
	// nominal value). 0 means 100 ms and 10 s.
	BackoffMin, BackoffMax time.Duration
	// TLS configures amqps:// connections. nil means the settings from the URL (or Go's
	// defaults).
	TLS *tls.Config
	// Logger receives lifecycle logs (connects, losses, reconnects). nil means none.
	Logger watermill.LoggerAdapter
	// Registerer receives the connection metrics. nil means they are not registered.
	Registerer prometheus.Registerer
}

func (c *ConnectionConfig) setDefaults() {
	if c.URL == "" {
		c.URL = os.Getenv("RABBIT_URI")
	}
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if c.Name == "" {
		c.Name = "micromessaging"
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 100 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports every problem of the configuration at once. It is called by
// NewConnection after the defaults are applied.
func (c ConnectionConfig) Validate() error {
	var errs []error
	if _, err := amqp.ParseURI(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("rabbitmq: URL %q: %w", redactURL(c.URL), err))
	}
	if c.Heartbeat < 0 {
		errs = append(errs, errors.New("rabbitmq: Heartbeat must not be negative"))
	}
	if c.DialTimeout < 0 {
		errs = append(errs, errors.New("rabbitmq: DialTimeout must not be negative"))
	}
	if c.BackoffMin < 0 || c.BackoffMax < 0 {
		errs = append(errs, errors.New("rabbitmq: BackoffMin and BackoffMax must not be negative"))
	} else if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("rabbitmq: BackoffMax (%s) is less than BackoffMin (%s)", c.BackoffMax, c.BackoffMin))
	}
	return errors.Join(errs...)
}

// Connection is one AMQP connection that re-dials by itself after it is lost. Publishers
// and Subscribers open their channels on it; when it comes back they open new channels,
// redeclare their topology and carry on. See the package documentation.
//
// A Connection is safe for concurrent use.
type Connection struct {
	cfg     ConnectionConfig
	logger  watermill.LoggerAdapter
	metrics connMetrics

	connectMu sync.Mutex // serializes Connect

	mu      sync.Mutex
	state   State
	started bool             // Connect succeeded once
	conn    *amqp.Connection // current connection (may be dead until the supervisor notices)
	cork    *corkConn        // conn's socket
	changed chan struct{}    // closed and replaced on every change of state or conn
	cancel  context.CancelFunc

	stateCh   chan State // latest-value channel (capacity 1)
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NewConnection validates cfg and returns a Connection in state Disconnected. It does no
// I/O and starts no goroutine: call Connect.
func NewConnection(cfg ConnectionConfig) (*Connection, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Connection{
		cfg:     cfg,
		logger:  cfg.Logger.With(watermill.LogFields{"connection": cfg.Name}),
		metrics: newConnMetrics(cfg.Registerer, cfg.Name),
		changed: make(chan struct{}),
		stateCh: make(chan State, 1),
		closing: make(chan struct{}),
	}
	c.metrics.state.Set(float64(Disconnected))
	return c, nil
}

// Name returns ConnectionConfig.Name (after defaults).
func (c *Connection) Name() string { return c.cfg.Name }

// Connect dials the broker once, synchronously, bounded by ctx and DialTimeout. When the
// dial fails it returns the error (a wrong URL, refused credentials or an unreachable
// broker are reported here, not retried in the background) and the Connection stays
// Disconnected: Connect may be called again. When it succeeds, a supervisor goroutine
// takes over: it notices when the connection is lost and re-dials with backoff until it
// is back or Close is called. Calling Connect again after a success is a no-op; after
// Close it returns ErrClosed.
func (c *Connection) Connect(ctx context.Context) error {
	c.connectMu.Lock()
	defer c.connectMu.Unlock()
	c.mu.Lock()
	if c.state == Closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.started {
		c.mu.Unlock()
		return nil
	}
	c.setStateLocked(Connecting, nil)
	c.mu.Unlock()

	conn, cork, err := c.dial(ctx)
	if err != nil {
		c.mu.Lock()
		if c.state != Closed {
			c.setStateLocked(Disconnected, nil)
		}
		c.mu.Unlock()
		return fmt.Errorf("rabbitmq: connect to %s: %w", redactURL(c.cfg.URL), err)
	}
	c.mu.Lock()
	if c.state == Closed { // Close ran while we dialed
		c.mu.Unlock()
		_ = conn.Close()
		return ErrClosed
	}
	superCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.started = true
	c.cork = cork
	c.setStateLocked(Connected, conn)
	c.wg.Add(1)
	c.mu.Unlock()
	c.logger.Info("RabbitMQ connection established", nil)
	go c.supervise(superCtx, conn)
	return nil
}

// State returns the current state.
func (c *Connection) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// StateChanges returns a latest-value channel: after every change of state it holds the
// newest state (an older unread value is replaced, never queued), so a slow reader sees
// the current state and never blocks the Connection. There is one such channel per
// Connection: share it with one reader.
func (c *Connection) StateChanges() <-chan State { return c.stateCh }

// Close closes the AMQP connection and stops reconnecting. It does not close the
// Publishers and Subscribers that use the Connection (close them first: they then
// flush acks and drain in-flight messages; if they are still running they end with
// ErrClosed). Close is idempotent and bounded by about DialTimeout.
func (c *Connection) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.mu.Lock()
		cancel := c.cancel
		c.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		c.wg.Wait() // the supervisor closes the AMQP connection on its way out
		c.mu.Lock()
		conn := c.conn
		c.setStateLocked(Closed, nil)
		c.mu.Unlock()
		if conn != nil && !conn.IsClosed() { // only when the supervisor never ran
			_ = conn.CloseDeadline(time.Now().Add(c.cfg.DialTimeout))
		}
		c.logger.Info("RabbitMQ connection closed", nil)
	})
	return nil
}

// Channel opens a new raw channel on the current live connection, waiting for the
// Connection to be Connected (bounded by ctx). The caller owns the channel and closes
// it; it does not survive a reconnect (watch it with NotifyClose). Use it for what the
// Publisher and Subscriber do not cover, such as an exclusive lock queue that is held
// until the channel or connection closes. Errors: ErrNotConnected before Connect
// succeeded, ErrClosed after Close, ctx's error, or the broker's.
func (c *Connection) Channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		conn, err := c.wait(ctx, nil)
		if err != nil {
			return nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
		}
		// The connection died under us: wait for the next one.
	}
}

// wait returns the live AMQP connection, waiting while the Connection is reconnecting.
// It returns ErrNotConnected when Connect never succeeded, ErrClosed after Close (or when
// stop is closed), or ctx's error.
func (c *Connection) wait(ctx context.Context, stop <-chan struct{}) (*amqp.Connection, error) {
	for {
		conn, changed, err := c.current()
		if err != nil || conn != nil {
			return conn, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("rabbitmq: waiting for the connection (%s): %w", c.State(), ctx.Err())
		case <-c.closing:
			return nil, ErrClosed
		case <-stop:
			return nil, ErrClosed
		}
	}
}

// corkFor returns the socket of conn when it is the current connection (nil otherwise).
func (c *Connection) corkFor(conn *amqp.Connection) *corkConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != conn {
		return nil
	}
	return c.cork
}

// current returns the live AMQP connection, or (nil, changed, nil) while there is none:
// changed is closed on the next change of state.
func (c *Connection) current() (*amqp.Connection, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == Closed:
		return nil, nil, ErrClosed
	case !c.started:
		return nil, nil, ErrNotConnected
	case c.state == Connected && c.conn != nil && !c.conn.IsClosed():
		return c.conn, nil, nil
	}
	return nil, c.changed, nil
}

// setStateLocked records a new state (and connection when conn != nil or the state is
// not Connected), wakes waiters and publishes the state. c.mu must be held.
func (c *Connection) setStateLocked(s State, conn *amqp.Connection) {
	if s == Connected {
		c.conn = conn
	}
	if s == c.state && s != Connected {
		return
	}
	c.state = s
	close(c.changed)
	c.changed = make(chan struct{})
	c.metrics.state.Set(float64(s))
	// Latest value: replace an unread older state.
	select {
	case <-c.stateCh:
	default:
	}
	c.stateCh <- s
}

func (c *Connection) dial(ctx context.Context) (*amqp.Connection, *corkConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var stop func() bool // stops interrupting the handshake when ctx ends
	var cork *corkConn
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(c.cfg.Name)
	cfg := amqp.Config{
		Heartbeat:       c.cfg.Heartbeat,
		Properties:      props,
		TLSClientConfig: c.cfg.TLS,
		Dial: func(network, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the TLS and AMQP handshakes; amqp091 clears it once connected.
			deadline, _ := ctx.Deadline()
			if err := conn.SetDeadline(deadline); err != nil {
				_ = conn.Close()
				return nil, err
			}
			// A cancelled ctx interrupts the handshake at once.
			stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
			cork = &corkConn{Conn: conn}
			return cork, nil
		},
	}
	if cfg.TLSClientConfig != nil {
		cfg.TLSClientConfig = cfg.TLSClientConfig.Clone()
	}
	conn, err := amqp.DialConfig(c.cfg.URL, cfg)
	if stop != nil && !stop() {
		// ctx ended during the handshake and its deadline was moved to now.
		if err == nil {
			_ = conn.Close()
		}
		return nil, nil, ctx.Err()
	}
	if err != nil {
		return nil, nil, err
	}
	return conn, cork, nil
}

// supervise watches the live connection and re-dials after it is lost.
func (c *Connection) supervise(ctx context.Context, conn *amqp.Connection) {
	defer c.wg.Done()
	for {
		lost := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		var reason *amqp.Error
	watch:
		for {
			select {
			case <-ctx.Done():
				_ = conn.CloseDeadline(time.Now().Add(c.cfg.DialTimeout))
				c.metrics.blocked.Set(0)
				return
			case b, ok := <-blocked:
				if !ok {
					blocked = nil
					continue
				}
				if b.Active {
					c.metrics.blocked.Set(1)
					c.logger.Error("RabbitMQ blocks publishing on this connection", nil, watermill.LogFields{"reason": b.Reason})
				} else {
					c.metrics.blocked.Set(0)
					c.logger.Info("RabbitMQ unblocked publishing on this connection", nil)
				}
			case reason = <-lost:
				break watch
			}
		}
		c.metrics.blocked.Set(0)
		c.mu.Lock()
		c.setStateLocked(Disconnected, nil)
		c.mu.Unlock()
		var lostErr error = ErrClosed
		if reason != nil {
			lostErr = reason
		}
		c.logger.Error("RabbitMQ connection lost; reconnecting", lostErr, nil)

		for attempt := 1; ; attempt++ {
			c.mu.Lock()
			c.setStateLocked(Connecting, nil)
			c.mu.Unlock()
			t := time.NewTimer(backoff(attempt, c.cfg.BackoffMin, c.cfg.BackoffMax))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			next, cork, err := c.dial(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				c.logger.Info("RabbitMQ reconnect failed", watermill.LogFields{"attempt": attempt, "error": err.Error()})
				continue
			}
			c.mu.Lock()
			if c.state == Closed {
				c.mu.Unlock()
				_ = next.Close()
				return
			}
			c.metrics.reconnects.Inc() // before the state: whoever sees Connected sees the count
			c.cork = cork
			c.setStateLocked(Connected, next)
			c.mu.Unlock()
			c.logger.Info("RabbitMQ connection re-established", watermill.LogFields{"attempts": attempt})
			conn = next
			break
		}
	}
}

// backoff returns the wait before attempt n (1-based): min doubled n-1 times, capped at
// max, with jitter (50-100 % of that).
func backoff(attempt int, minD, maxD time.Duration) time.Duration {
	if minD <= 0 {
		return 0
	}
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	if d > maxD {
		d = maxD
	}
	half := d / 2
	return half + rand.N(half+1)
}

// redactURL hides the password of an AMQP URL for logs and errors.
func redactURL(url string) string {
	at := strings.LastIndex(url, "@")
	scheme := strings.Index(url, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return url
	}
	cred := url[scheme+3 : at]
	if i := strings.Index(cred, ":"); i >= 0 {
		cred = cred[:i] + ":***"
	}
	return url[:scheme+3] + cred + url[at:]
}
