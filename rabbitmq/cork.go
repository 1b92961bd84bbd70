package rabbitmq

import (
	"net"
	"sync"
	"sync/atomic"
)

// corkMax bounds the bytes a corked connection holds before it writes anyway.
const corkMax = 64 << 10

// corkConn is the socket of a Connection. amqp091 flushes its buffer to the socket after
// every publish, which costs a write system call per message (on both sides of the
// socket). While a Publisher has publishes in progress on the connection ("corked"),
// corkConn collects those writes and sends them in one system call when the last
// publish in progress is written (or corkMax bytes are waiting). Other writes (acks,
// heartbeats, other channels) made meanwhile go out with that burst; with nothing
// corked, every write goes straight to the socket.
type corkConn struct {
	net.Conn
	corks atomic.Int32

	mu  sync.Mutex
	buf []byte
	err error // sticky: the socket failed
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corks.Load() > 0 && len(c.buf)+len(p) <= corkMax {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if len(c.buf) > 0 {
		c.buf = append(c.buf, p...)
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

func (c *corkConn) flushLocked() error {
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 4*corkMax {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	if err != nil {
		c.err = err
	}
	return err
}

// cork starts a burst of writes: they are collected until the matching uncork of the last
// burst in progress.
func (c *corkConn) cork() { c.corks.Add(1) }

// uncork ends a burst; the last one in progress sends what was collected.
func (c *corkConn) uncork() {
	if c.corks.Add(-1) > 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corks.Load() == 0 && len(c.buf) > 0 && c.err == nil {
		if err := c.flushLocked(); err != nil {
			// Nobody is there to get this error: close the socket so that amqp091's reader
			// notices and the connection is re-established.
			_ = c.Conn.Close()
		}
	}
}
