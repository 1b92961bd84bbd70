package rabbitmq

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
)

// recConn records the writes that reach the socket.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	err    error
	closed bool
}

func (r *recConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recConn) Close() error { r.closed = true; return nil }

func TestCorkCollectsABurst(t *testing.T) {
	rec := &recConn{}
	c := &corkConn{Conn: rec}
	if _, err := c.Write([]byte("a")); err != nil || len(rec.writes) != 1 {
		t.Fatalf("uncorked write not sent at once: %v %q", err, rec.writes)
	}
	c.cork()
	c.cork()
	for _, s := range []string{"b", "c", "d"} {
		if n, err := c.Write([]byte(s)); n != 1 || err != nil {
			t.Fatal(n, err)
		}
	}
	c.uncork()
	if len(rec.writes) != 1 {
		t.Fatalf("sent while a burst is in progress: %q", rec.writes)
	}
	c.uncork()
	if len(rec.writes) != 2 || string(rec.writes[1]) != "bcd" {
		t.Fatalf("burst not sent in one write: %q", rec.writes)
	}
}

func TestCorkBoundedAndErrors(t *testing.T) {
	rec := &recConn{}
	c := &corkConn{Conn: rec}
	c.cork()
	big := make([]byte, corkMax/2+1)
	_, _ = c.Write(big)
	_, _ = c.Write(big) // would exceed corkMax: written at once with what is held
	if len(rec.writes) != 1 || len(rec.writes[0]) != 2*len(big) {
		t.Fatalf("writes %d", len(rec.writes))
	}
	_, _ = c.Write([]byte("x"))
	rec.err = errors.New("broken pipe")
	c.uncork()
	if !rec.closed {
		t.Fatal("a failed flush without a caller must close the socket")
	}
	if _, err := c.Write([]byte("y")); err == nil {
		t.Fatal("write after a socket error succeeded")
	}
}
