package election

import (
	"context"
	"errors"
	"sync"
)

// memBroker is an in-memory stand-in for the broker's exclusive lock queues, for unit
// tests: one memConn per instance, like one AMQP connection.
type memBroker struct {
	mu      sync.Mutex
	holders map[string]*memConn
}

func newMemBroker() *memBroker { return &memBroker{holders: map[string]*memConn{}} }

type memConn struct {
	b    *memBroker
	dead bool
	lost map[string]chan struct{}
}

func (b *memBroker) conn() *memConn { return &memConn{b: b, lost: map[string]chan struct{}{}} }

var errDead = errors.New("memConn: connection closed")

func (c *memConn) TryLock(ctx context.Context, name string) (<-chan struct{}, func(context.Context) error, error) {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if c.dead {
		return nil, nil, errDead
	}
	if h := c.b.holders[name]; h != nil && h != c {
		return nil, nil, ErrLockHeld
	}
	c.b.holders[name] = c
	lost := make(chan struct{})
	c.lost[name] = lost
	var once sync.Once
	return lost, func(context.Context) error {
		once.Do(func() {
			c.b.mu.Lock()
			defer c.b.mu.Unlock()
			if c.lost[name] == lost {
				delete(c.lost, name)
				close(lost)
				if c.b.holders[name] == c {
					delete(c.b.holders, name)
				}
			}
		})
		return nil
	}, nil
}

// kill closes the connection: every lock it holds is lost and freed.
func (c *memConn) kill() {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.dead = true
	for name, l := range c.lost {
		close(l)
		delete(c.lost, name)
		if c.b.holders[name] == c {
			delete(c.b.holders, name)
		}
	}
}

// holder returns the connection holding name.
func (b *memBroker) holder(name string) *memConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holders[name]
}
