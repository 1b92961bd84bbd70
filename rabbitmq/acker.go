package rabbitmq

import (
	"math/rand/v2"
	"sync"
	"time"
)

// ackSender is the part of *amqp.Channel the acker uses.
type ackSender interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

// States of a delivery tag in the acker's window.
const (
	tagOutstanding uint8 = iota // delivered (or not yet seen), not settled by the handler
	tagAcked                    // acked by the handler, ack not sent yet
	tagSent                     // settled on the wire (ack or nack sent)
	tagNackWait                 // nacked by the handler, requeue waits for the nack delay
)

// acker settles the deliveries of one channel. Acks are coalesced: when every tag up to
// some tag T is settled, one basic.ack(multiple) up to the highest acked tag settles them
// all. It flushes at once when ackBatch acks are pending, otherwise after flushDelay.
// When the prefix is held up by a slow message, acks above it are sent one by one once
// ackBatch of them pile up, so the prefetch window never stalls. Nacks requeue after
// nackDelay (with jitter), so a failing message never spins in a hot loop.
//
// Delivery tags on a channel are 1, 2, 3... in delivery order, whatever the consumer, so
// the acker needs no registration: an unseen tag is outstanding.
type acker struct {
	mu sync.Mutex
	ch ackSender

	base   uint64  // every tag <= base is acked or sent
	win    []uint8 // states of tags base+1, base+2, ...
	target uint64  // highest acked-but-unsent tag <= base; 0 = none
	unsent int     // acked-but-unsent tags <= base
	above  int     // acked-but-unsent tags > base

	batch      int
	flushDelay time.Duration
	nackDelay  time.Duration
	timer      *time.Timer
	armed      bool
	nackTimers map[uint64]*time.Timer
	closed     bool
	onErr      func(op string, err error) // called under mu; must not call back
}

func newAcker(ch ackSender, batch int, flushDelay, nackDelay time.Duration, onErr func(string, error)) *acker {
	a := &acker{
		ch:         ch,
		batch:      max(1, batch),
		flushDelay: flushDelay,
		nackDelay:  nackDelay,
		nackTimers: make(map[uint64]*time.Timer),
		onErr:      onErr,
	}
	return a
}

// setBatch changes the flush threshold (after a prefetch change).
func (a *acker) setBatch(n int) {
	a.mu.Lock()
	a.batch = max(1, n)
	a.mu.Unlock()
}

// set records the state of tag; it reports false for a tag already settled.
func (a *acker) set(tag uint64, st uint8) bool {
	if tag <= a.base {
		return false
	}
	i := int(tag - a.base - 1)
	for len(a.win) <= i {
		a.win = append(a.win, tagOutstanding)
	}
	if a.win[i] == tagSent || a.win[i] == tagAcked {
		return false
	}
	a.win[i] = st
	return true
}

// advance moves base over the settled prefix.
func (a *acker) advance() {
	n := 0
	for n < len(a.win) {
		st := a.win[n]
		if st != tagAcked && st != tagSent {
			break
		}
		if st == tagAcked {
			a.target = a.base + uint64(n) + 1
			a.unsent++
			a.above--
		}
		n++
	}
	if n == 0 {
		return
	}
	a.base += uint64(n)
	if n == len(a.win) {
		a.win = a.win[:0]
	} else {
		a.win = a.win[n:]
	}
}

// ack records a handler's ack.
func (a *acker) ack(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || !a.set(tag, tagAcked) {
		return
	}
	a.above++
	a.advance()
	a.afterSettleLocked()
}

// nack records a handler's nack: the message is requeued after the nack delay.
func (a *acker) nack(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	if a.nackDelay <= 0 {
		a.sendNackLocked(tag, true)
		return
	}
	if !a.set(tag, tagNackWait) {
		return
	}
	// Jitter: 75-125 % of the delay, so a batch of failures does not come back at once.
	d := a.nackDelay*3/4 + rand.N(a.nackDelay/2+1)
	a.nackTimers[tag] = time.AfterFunc(d, func() { a.nackNow(tag) })
}

func (a *acker) nackNow(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	delete(a.nackTimers, tag)
	a.sendNackLocked(tag, true)
}

// reject nacks tag without requeue at once (an undecodable message: dead-lettered if
// the queue has a dead-letter exchange, dropped otherwise).
func (a *acker) reject(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.sendNackLocked(tag, false)
	}
}

// release requeues tag at once: a delivery that was never handed to a handler
// (consumption paused or stopped while it was buffered).
func (a *acker) release(tag uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.sendNackLocked(tag, true)
	}
}

func (a *acker) sendNackLocked(tag uint64, requeue bool) {
	if tag <= a.base {
		return
	}
	i := int(tag - a.base - 1)
	if i < len(a.win) && (a.win[i] == tagSent || a.win[i] == tagAcked) {
		return
	}
	if err := a.ch.Nack(tag, false, requeue); err != nil && a.onErr != nil {
		a.onErr("nack", err)
	}
	a.set(tag, tagSent)
	a.advance()
	a.afterSettleLocked()
}

func (a *acker) afterSettleLocked() {
	if a.closed {
		return
	}
	if a.unsent >= a.batch {
		a.flushPrefixLocked()
	}
	if (a.unsent > 0 || a.above > 0) && !a.armed {
		a.armed = true
		if a.timer == nil {
			a.timer = time.AfterFunc(a.flushDelay, a.timerFlush)
		} else {
			a.timer.Reset(a.flushDelay)
		}
	}
}

func (a *acker) timerFlush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.armed = false
	if !a.closed {
		a.flushLocked(false)
	}
}

// flushLocked sends the coalesced ack of the settled prefix. Acks above the prefix are
// sent one by one when all is set, or when ackBatch of them still wait behind a slow
// message one flush delay after they were made.
func (a *acker) flushLocked(all bool) {
	a.flushPrefixLocked()
	if a.above > 0 && (all || a.above >= a.batch) {
		for i, st := range a.win {
			if st == tagAcked {
				if err := a.ch.Ack(a.base+uint64(i)+1, false); err != nil && a.onErr != nil {
					a.onErr("ack", err)
				}
				a.win[i] = tagSent
			}
		}
		a.above = 0
		a.advance() // moves over sent tags only: nothing new to ack
	}
}

func (a *acker) flushPrefixLocked() {
	if a.target > 0 {
		if err := a.ch.Ack(a.target, true); err != nil && a.onErr != nil {
			a.onErr("ack", err)
		}
		a.target, a.unsent = 0, 0
	}
}

// pending reports whether a settled message still waits for its ack or nack to be sent.
func (a *acker) pending() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.unsent > 0 || a.above > 0 || len(a.nackTimers) > 0
}

// close sends every pending ack and delayed nack now (when flush is set; not when the
// channel is already dead) and turns later calls into no-ops.
func (a *acker) close(flush bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true // from here on nothing arms a timer
	if a.timer != nil {
		a.timer.Stop()
	}
	for tag, t := range a.nackTimers {
		t.Stop()
		delete(a.nackTimers, tag)
		if flush {
			a.sendNackLocked(tag, true)
		}
	}
	if flush {
		a.flushLocked(true)
	}
}
