package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// raw-rpc: request/reply in plain amqp091-go with the same shape on the wire as
// micromessaging's RPC (WIRE.md), so that `rpc` / `raw-rpc` measures what the library adds:
//
//   - server, on its own connection: consumes a durable request queue (x-expires 24 h, as
//     q.requests.* is declared) with prefetch 100, echoes each body to ReplyTo with the
//     request's CorrelationId and reply headers (idRequest, __mms isError/isEnd/sequence),
//     then acks the request;
//   - client: C concurrent callers share one connection and one channel; each call
//     publishes mandatory to the default exchange with a UUID CorrelationId, ReplyTo = a
//     named exclusive reply queue consumed with no-ack, Expiration, and request headers
//     (idRequest, __mms route/iat/eat); replies (and basic.returns) are dispatched to the
//     waiting caller by CorrelationId;
//   - 20 untimed warm-up calls per caller, then n round trips in total; round trips/s and
//     per-call p50/p99.

func init() {
	register("raw-rpc", rawRPC)
}

const (
	rawRPCPrefetch = 100
	rpcWarmup      = 20 // untimed calls per caller before the clock starts
	rpcCallTimeout = 10 * time.Second
)

func rawRPC(ctx context.Context, cfg config) (result, error) {
	reqQueue := queueName("raw-rpc.requests")
	stop, err := rawRPCServer(ctx, cfg.url, reqQueue)
	if err != nil {
		return result{}, fmt.Errorf("server: %w", err)
	}
	defer stop()

	client, err := newRawRPCClient(cfg.url, queueName("raw-rpc.reply"))
	if err != nil {
		return result{}, fmt.Errorf("client: %w", err)
	}
	defer client.close()

	body := payload(cfg.size)
	elapsed, lats, err := measureCalls(ctx, cfg.c, cfg.n, rpcWarmup, func(ctx context.Context) error {
		return client.call(ctx, reqQueue, body)
	})
	if err != nil {
		return result{}, err
	}
	return result{
		Seconds: elapsed.Seconds(),
		P50us:   percentile(lats, 50),
		P99us:   percentile(lats, 99),
		Opts: fmt.Sprintf("mandatory requests, named exclusive reply queue (no-ack), shared client channel, "+
			"server prefetch=%d ack each, %d warm-up calls/caller", rawRPCPrefetch, rpcWarmup),
	}, nil
}

// rawRPCServer declares the request queue and echoes every request until stop is called;
// stop deletes the queue and joins the server goroutine.
func rawRPCServer(ctx context.Context, url, queue string) (stop func(), err error) {
	conn, ch, err := dial(url)
	if err != nil {
		return nil, err
	}
	args := amqp.Table{"x-expires": int32(86_400_000)}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		conn.Close()
		return nil, err
	}
	if err := ch.Qos(rawRPCPrefetch, 0, false); err != nil {
		conn.Close()
		deleteQueue(url, queue)
		return nil, err
	}
	requests, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		conn.Close()
		deleteQueue(url, queue)
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range requests {
			reply := amqp.Publishing{
				ContentType:   "application/json",
				CorrelationId: d.CorrelationId,
				Headers: amqp.Table{
					"idRequest": d.Headers["idRequest"],
					"__mms":     amqp.Table{"isError": false, "isEnd": true, "sequence": int64(0)},
				},
				Body: d.Body,
			}
			if err := ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, reply); err != nil {
				return
			}
			if err := d.Ack(false); err != nil {
				return
			}
		}
	}()
	return func() {
		deleteQueue(url, queue)
		conn.Close()
		<-done
	}, nil
}

type rawRPCClient struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	replyTo string
	done    chan struct{}

	mu      sync.Mutex
	pending map[string]chan rawReply
}

type rawReply struct {
	body []byte
	err  error
}

func newRawRPCClient(url, replyQueue string) (*rawRPCClient, error) {
	conn, ch, err := dial(url)
	if err != nil {
		return nil, err
	}
	if _, err := ch.QueueDeclare(replyQueue, false, false, true, false, nil); err != nil { // exclusive
		conn.Close()
		return nil, err
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 16))
	replies, err := ch.Consume(replyQueue, "", true, true, false, false, nil) // no-ack, exclusive
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &rawRPCClient{conn: conn, ch: ch, replyTo: replyQueue, done: make(chan struct{}), pending: map[string]chan rawReply{}}
	go func() {
		defer close(c.done)
		for replies != nil || returns != nil {
			select {
			case d, ok := <-replies:
				if !ok {
					replies = nil
					continue
				}
				c.deliver(d.CorrelationId, rawReply{body: d.Body})
			case r, ok := <-returns:
				if !ok {
					returns = nil
					continue
				}
				c.deliver(r.CorrelationId, rawReply{err: fmt.Errorf("request returned unroutable: %s", r.ReplyText)})
			}
		}
	}()
	return c, nil
}

func (c *rawRPCClient) deliver(id string, r rawReply) {
	c.mu.Lock()
	waiter := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if waiter != nil {
		waiter <- r // buffered 1, one send per id
	}
}

// call does one request -> reply round trip.
func (c *rawRPCClient) call(ctx context.Context, queue string, body []byte) error {
	id := uuid.NewString()
	reply := make(chan rawReply, 1)
	c.mu.Lock()
	c.pending[id] = reply
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	now := time.Now().UnixMilli()
	timeoutMs := rpcCallTimeout.Milliseconds()
	msg := amqp.Publishing{
		ContentType:   "application/json",
		CorrelationId: id,
		ReplyTo:       c.replyTo,
		Expiration:    strconv.FormatInt(timeoutMs, 10),
		Headers: amqp.Table{
			"idRequest": uuid.NewString(),
			"__mms":     amqp.Table{"route": "echo", "iat": now, "eat": now + timeoutMs},
		},
		Body: body,
	}
	if err := c.ch.PublishWithContext(ctx, "", queue, true, false, msg); err != nil {
		forget()
		return err
	}
	timer := time.NewTimer(rpcCallTimeout)
	defer timer.Stop()
	select {
	case r := <-reply:
		if r.err != nil {
			return r.err
		}
		if len(r.body) != len(body) {
			return fmt.Errorf("reply of %d bytes, want %d", len(r.body), len(body))
		}
		return nil
	case <-timer.C:
		forget()
		return errors.New("no reply within " + rpcCallTimeout.String())
	case <-ctx.Done():
		forget()
		return ctx.Err()
	}
}

func (c *rawRPCClient) close() {
	c.conn.Close() // closes the deliveries and returns channels
	<-c.done
}

// payload returns a valid JSON document of exactly size bytes (a string of x's), so that
// library scenarios that parse JSON bodies and raw scenarios carry the same bytes.
func payload(size int) []byte {
	switch {
	case size <= 0:
		return []byte{}
	case size == 1:
		return []byte("0")
	}
	b := make([]byte, size)
	b[0], b[size-1] = '"', '"'
	for i := 1; i < size-1; i++ {
		b[i] = 'x'
	}
	return b
}
