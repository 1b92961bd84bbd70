package wire_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/internal/testbroker"
	"github.com/micromessaging/micromessaging/wire"
)

// The Codec is a watermill-amqp v3 Marshaler.
var _ wmamqp.Marshaler = wire.Codec{}

// bigJSON returns a JSON payload of more than GzipThreshold bytes.
func bigJSON() []byte {
	return []byte(`{"blob":"` + strings.Repeat("<micromessaging & watermill>", 40_000) + `"}`)
}

// TestWatermillAMQP runs the Codec through stock watermill-amqp v3 against the real
// broker: Watermill to Watermill, Watermill to a raw amqp091 consumer (the wire shape),
// and a raw Node-shaped publish to a Watermill subscriber.
func TestWatermillAMQP(t *testing.T) {
	url := testbroker.URL(t)

	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := func(t *testing.T) string { // a unique queue, deleted after the test
		name := testbroker.Name("wire.wmamqp")
		t.Cleanup(func() {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", name, err)
			}
		})
		return name
	}

	cfg := wmamqp.NewDurableQueueConfig(url)
	cfg.Marshaler = wire.Codec{Persistent: true}
	logger := watermill.NopLogger{}
	pub, err := wmamqp.NewPublisher(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	sub, err := wmamqp.NewSubscriber(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })

	payload := bigJSON()
	if len(payload) <= wire.GzipThreshold {
		t.Fatalf("payload of %d bytes is not over the gzip threshold", len(payload))
	}
	iat := time.Now().UnixMilli()
	newRequest := func(replyTo string) *message.Message {
		msg := message.NewMessage(watermill.NewUUID(), payload)
		msg.Metadata = message.Metadata{
			wire.MetaCorrelationID: "corr-" + watermill.NewShortUUID(),
			wire.MetaReplyTo:       replyTo,
			wire.MetaExpiration:    "60000",
			wire.HeaderIDRequest:   watermill.NewUUID(),
			"x-user":               "alice <admin>",
			wire.MetaMMSRoute:      "echo",
			wire.MetaMMSIAT:        strconv.FormatInt(iat, 10),
			wire.MetaMMSEAT:        strconv.FormatInt(iat+60000, 10),
		}
		return msg
	}
	receive := func(t *testing.T, msgs <-chan *message.Message) *message.Message {
		t.Helper()
		select {
		case m := <-msgs:
			if m == nil {
				t.Fatal("subscription closed")
			}
			m.Ack()
			return m
		case <-time.After(30 * time.Second):
			t.Fatal("no message within 30 s")
		}
		return nil
	}

	t.Run("watermill to watermill", func(t *testing.T) {
		topic := queue(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		msgs, err := sub.Subscribe(ctx, topic) // declares the durable queue
		if err != nil {
			t.Fatal(err)
		}
		sent := newRequest(wire.ReplyQueue("caller", watermill.NewUUID()))
		if err := pub.Publish(topic, sent); err != nil {
			t.Fatal(err)
		}
		got := receive(t, msgs)
		if got.UUID != sent.UUID {
			t.Errorf("UUID %q, want %q", got.UUID, sent.UUID)
		}
		if !bytes.Equal(got.Payload, payload) {
			t.Errorf("payload: %d bytes, want the %d sent", len(got.Payload), len(payload))
		}
		for k, v := range sent.Metadata {
			if got.Metadata[k] != v {
				t.Errorf("metadata %s = %q, want %q", k, got.Metadata[k], v)
			}
		}
		for k, v := range map[string]string{
			wire.MetaContentEncoding: "gzip", wire.MetaContentType: wire.ContentType,
			wire.MetaRoutingKey: topic, wire.MetaRedelivered: "false",
		} {
			if got.Metadata[k] != v {
				t.Errorf("metadata %s = %q, want %q", k, got.Metadata[k], v)
			}
		}
	})

	t.Run("wire shape seen by a raw consumer", func(t *testing.T) {
		topic := queue(t)
		if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		sent := newRequest(wire.ReplyQueue("caller", "i-1"))
		sent.Metadata[wire.MetaMMSIsTask] = "false"
		sent.Metadata[wire.MetaMMSSequence] = "7"
		if err := pub.Publish(topic, sent); err != nil {
			t.Fatal(err)
		}
		var d amqp.Delivery
		for deadline := time.Now().Add(30 * time.Second); ; {
			var ok bool
			if d, ok, err = ch.Get(topic, true); err != nil {
				t.Fatal(err)
			} else if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no message within 30 s")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if d.ContentType != "application/json" || d.ContentEncoding != "gzip" || d.DeliveryMode != amqp.Persistent {
			t.Errorf("ContentType %q ContentEncoding %q DeliveryMode %d", d.ContentType, d.ContentEncoding, d.DeliveryMode)
		}
		if d.MessageId != sent.UUID || d.CorrelationId != sent.Metadata[wire.MetaCorrelationID] ||
			d.ReplyTo != "q.replyQueue.caller.i-1" || d.Expiration != "60000" {
			t.Errorf("properties: MessageId %q CorrelationId %q ReplyTo %q Expiration %q", d.MessageId, d.CorrelationId, d.ReplyTo, d.Expiration)
		}
		if d.Headers["x-user"] != "alice <admin>" || d.Headers["idRequest"] != sent.Metadata["idRequest"] {
			t.Errorf("user headers %#v", d.Headers)
		}
		for k := range d.Headers {
			if strings.HasPrefix(k, "mm") && k != "__mms" {
				t.Errorf("metadata key %s sent as a header", k)
			}
		}
		mms, ok := d.Headers["__mms"].(amqp.Table)
		if !ok {
			t.Fatalf("__mms is %T", d.Headers["__mms"])
		}
		want := amqp.Table{"route": "echo", "iat": iat, "eat": iat + 60000, "isTask": false, "sequence": int64(7)}
		if len(mms) != len(want) {
			t.Errorf("__mms %#v, want %#v", mms, want)
		}
		for k, v := range want {
			if mms[k] != v { // compares dynamic types too: int64, bool, string
				t.Errorf("__mms.%s = %T(%v), want %T(%v)", k, mms[k], mms[k], v, v)
			}
		}
		zr, err := gzip.NewReader(bytes.NewReader(d.Body))
		if err != nil {
			t.Fatal(err)
		}
		inflated, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(inflated, payload) {
			t.Errorf("body does not gunzip to the payload (%v)", err)
		}
	})

	t.Run("node-shaped raw publish to watermill", func(t *testing.T) {
		topic := queue(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write([]byte(`{"i":3}`)) // gzip below the threshold: accepted at any size
		zw.Close()
		err = ch.PublishWithContext(ctx, "", topic, false, false, amqp.Publishing{
			ContentType: "application/json", ContentEncoding: "gzip", CorrelationId: "c-node",
			Headers: amqp.Table{
				"idRequest": "r-node", "x-num": int16(5), "x-flag": true, "x-tab": amqp.Table{"a": int8(1)},
				"__mms": amqp.Table{"isError": false, "isEnd": false, "isStream": true, "sequence": int8(3)},
			},
			Body: z.Bytes(),
		})
		if err != nil {
			t.Fatal(err)
		}
		got := receive(t, msgs)
		if string(got.Payload) != `{"i":3}` {
			t.Errorf("payload %q", got.Payload)
		}
		for k, v := range map[string]string{
			"idRequest": "r-node", "x-num": "5", "x-flag": "true", "x-tab": `{"a":1}`,
			wire.MetaCorrelationID: "c-node", wire.MetaContentEncoding: "gzip",
			wire.MetaMMSIsError: "false", wire.MetaMMSIsEnd: "false", wire.MetaMMSIsStream: "true", wire.MetaMMSSequence: "3",
		} {
			if got.Metadata[k] != v {
				t.Errorf("metadata %s = %q, want %q", k, got.Metadata[k], v)
			}
		}
		m, err := wire.MMSFromMetadata(got.Metadata)
		if err != nil || m.Sequence == nil || *m.Sequence != 3 || m.IsStream == nil || !*m.IsStream {
			t.Errorf("MMS %+v, %v", m, err)
		}
	})
}
