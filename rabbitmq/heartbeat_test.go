package rabbitmq_test

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/rabbitmq"
)

// freezer is a loopback TCP proxy to the broker that can stop forwarding while
// keeping its sockets open: to the client, a broker that went silent without closing
// the connection (a dead host, a partition).
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, b)
		f.mu.Unlock()
		f.wg.Add(2)
		go f.pipe(c, b)
		go f.pipe(b, c)
	}
}

// pipe copies src to dst until either fails, then closes dst. While frozen, what it
// reads is dropped, and the end of src is not passed on either: the other side just
// hears nothing (so a broker that gives up on the silent client does not tell it).
func (f *freezer) pipe(src, dst net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		frozen := f.frozen
		f.mu.Unlock()
		if n > 0 && !frozen {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				return
			}
		}
		if err != nil {
			if !frozen {
				_ = dst.Close()
			}
			return
		}
	}
}

func (f *freezer) setFrozen(v bool) {
	f.mu.Lock()
	f.frozen = v
	f.mu.Unlock()
}

func (f *freezer) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// TestSilentBrokerIsDetected: a connection whose broker stops sending anything (not
// even heartbeats) without closing the socket is given up after about 1.5 heartbeat
// intervals, and the Connection dials again. The heartbeat comes from the URL.
func TestSilentBrokerIsDetected(t *testing.T) {
	u, err := url.Parse(testbroker.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	f := newFreezer(t, u.Host)
	u.Host = f.ln.Addr().String()
	q := u.Query()
	q.Set("heartbeat", "1")
	u.RawQuery = q.Encode()

	conn, err := rabbitmq.NewConnection(rabbitmq.ConnectionConfig{URL: u.String(), Name: testbroker.Name("mmtest.silent"),
		Logger: testLogger(), BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	states := watchStates(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Healthy for several heartbeat intervals: the read deadline keeps moving.
	waitFor(t, 10*time.Second, "the connected state to be reported", func() bool {
		all := states.since(0)
		return len(all) > 0 && all[len(all)-1] == rabbitmq.Connected
	})
	mark := len(states.since(0))
	time.Sleep(3 * time.Second)
	if changes := states.since(mark); len(changes) > 0 || conn.State() != rabbitmq.Connected {
		t.Fatalf("connection not steady while the broker talks: %v, then %v", changes, conn.State())
	}
	f.setFrozen(true)
	frozenAt := time.Now()
	waitFor(t, 15*time.Second, "the silent connection to be given up", func() bool {
		return conn.State() != rabbitmq.Connected
	})
	t.Logf("given up %v after the broker went silent", time.Since(frozenAt))
	if d := time.Since(frozenAt); d < time.Second {
		t.Errorf("given up %v after the broker went silent, before one heartbeat interval", d)
	}
	f.setFrozen(false)
	waitFor(t, 20*time.Second, "a new connection", func() bool {
		changes := states.since(mark)
		return len(changes) > 1 && changes[len(changes)-1] == rabbitmq.Connected && conn.State() == rabbitmq.Connected
	})
}

// since returns the states recorded after the first n.
func (l *stateLog) since(n int) []rabbitmq.State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]rabbitmq.State(nil), l.states[min(n, len(l.states)):]...)
}
