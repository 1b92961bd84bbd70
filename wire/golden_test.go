package wire_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// Golden messages: deliveries exactly as a Node micromessaging v3.2.9 peer sends them
// (WIRE.md, conformance/), the metadata the Codec must decode them to, and the
// publishing it must encode that metadata to (the same message as a Go peer sends it).

const (
	gCorr      = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
	gIDRequest = "0b7c6f3e-5a0e-4f7c-9d2a-3f1e2d4c5b6a"
	gReplyQ    = "q.replyQueue.caller.9e8d7c6b-5a49-4382-a716-151413121110"
	gIAT       = 1764158400000
	gUUID      = "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d"
)

type golden struct {
	name     string
	delivery amqp.Delivery    // as Node sends it (properties a broker adds included)
	meta     message.Metadata // what Unmarshal returns
	payload  string           // what Unmarshal returns
	// the publishing Marshal returns for message{UUID: gUUID, Metadata: send, Payload: payload}
	send       message.Metadata
	publishing amqp.Publishing
}

func goldens() []golden {
	errBody := `{"error":{"message":"failed on purpose","codeString":"boom","code":418,"info":{"x":1},"level":"fatal","stack":"Error: failed on purpose\n    at handler","isCustomError":true}}`
	return []golden{
		{
			name: "request",
			delivery: amqp.Delivery{
				ContentType: "application/json", CorrelationId: gCorr, ReplyTo: gReplyQ, Expiration: "300",
				Headers: amqp.Table{
					"idRequest": gIDRequest, "x-user": "alice",
					"__mms": amqp.Table{"route": "echo", "iat": int64(gIAT), "eat": int64(gIAT + 300)},
				},
				Body: []byte(`{"a":[1,"x"]}`), RoutingKey: "q.requests.mmkit.echo", DeliveryTag: 1,
			},
			meta: message.Metadata{
				"mm.correlation_id": gCorr, "mm.reply_to": gReplyQ, "mm.expiration": "300",
				"mm.content_type": "application/json", "mm.redelivered": "false",
				"mm.routing_key": "q.requests.mmkit.echo",
				"idRequest":      gIDRequest, "x-user": "alice",
				"mms.route": "echo", "mms.iat": "1764158400000", "mms.eat": "1764158400300",
			},
			payload: `{"a":[1,"x"]}`,
			send: message.Metadata{
				"mm.correlation_id": gCorr, "mm.reply_to": gReplyQ, "mm.expiration": "300",
				"idRequest": gIDRequest, "x-user": "alice",
				"mms.route": "echo", "mms.iat": "1764158400000", "mms.eat": "1764158400300",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", CorrelationId: gCorr, ReplyTo: gReplyQ, Expiration: "300",
				MessageId: gUUID,
				Headers: amqp.Table{
					"idRequest": gIDRequest, "x-user": "alice",
					"__mms": amqp.Table{"route": "echo", "iat": int64(gIAT), "eat": int64(gIAT + 300)},
				},
				Body: []byte(`{"a":[1,"x"]}`),
			},
		},
		{
			name: "reply",
			delivery: amqp.Delivery{
				ContentType: "application/json", CorrelationId: gCorr,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": true, "sequence": int8(0)},
				},
				Body: []byte(`{"a":[1,"x"]}`), RoutingKey: gReplyQ, DeliveryTag: 2,
			},
			meta: message.Metadata{
				"mm.correlation_id": gCorr, "mm.content_type": "application/json",
				"mm.redelivered": "false", "mm.routing_key": gReplyQ,
				"idRequest":   gIDRequest,
				"mms.isError": "false", "mms.isEnd": "true", "mms.sequence": "0",
			},
			payload: `{"a":[1,"x"]}`,
			send: message.Metadata{
				"mm.correlation_id": gCorr, "idRequest": gIDRequest,
				"mms.isError": "false", "mms.isEnd": "true", "mms.sequence": "0",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", CorrelationId: gCorr, MessageId: gUUID,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": true, "sequence": int64(0)},
				},
				Body: []byte(`{"a":[1,"x"]}`),
			},
		},
		{
			name: "stream chunk",
			delivery: amqp.Delivery{
				ContentType: "application/json", CorrelationId: gCorr,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": false, "isStream": true, "sequence": int8(3)},
				},
				Body: []byte(`{"i":3}`), RoutingKey: gReplyQ, Redelivered: true,
			},
			meta: message.Metadata{
				"mm.correlation_id": gCorr, "mm.content_type": "application/json",
				"mm.redelivered": "true", "mm.routing_key": gReplyQ,
				"idRequest":   gIDRequest,
				"mms.isError": "false", "mms.isEnd": "false", "mms.isStream": "true", "mms.sequence": "3",
			},
			payload: `{"i":3}`,
			send: message.Metadata{
				"mm.correlation_id": gCorr, "idRequest": gIDRequest,
				"mms.isError": "false", "mms.isEnd": "false", "mms.isStream": "true", "mms.sequence": "3",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", CorrelationId: gCorr, MessageId: gUUID,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": false, "isStream": true, "sequence": int64(3)},
				},
				Body: []byte(`{"i":3}`),
			},
		},
		{
			name: "stream end",
			delivery: amqp.Delivery{
				ContentType: "application/json", CorrelationId: gCorr,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": true, "isStream": true, "sequence": int16(300)},
				},
				Body: []byte(`{"done":true}`), RoutingKey: gReplyQ,
			},
			meta: message.Metadata{
				"mm.correlation_id": gCorr, "mm.content_type": "application/json",
				"mm.redelivered": "false", "mm.routing_key": gReplyQ,
				"idRequest":   gIDRequest,
				"mms.isError": "false", "mms.isEnd": "true", "mms.isStream": "true", "mms.sequence": "300",
			},
			payload: `{"done":true}`,
			send: message.Metadata{
				"mm.correlation_id": gCorr, "idRequest": gIDRequest,
				"mms.isError": "false", "mms.isEnd": "true", "mms.isStream": "true", "mms.sequence": "300",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", CorrelationId: gCorr, MessageId: gUUID,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": false, "isEnd": true, "isStream": true, "sequence": int64(300)},
				},
				Body: []byte(`{"done":true}`),
			},
		},
		{
			name: "error",
			delivery: amqp.Delivery{
				ContentType: "application/json", CorrelationId: gCorr,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": true, "isEnd": true, "sequence": int8(0)},
				},
				Body: []byte(errBody), RoutingKey: gReplyQ,
			},
			meta: message.Metadata{
				"mm.correlation_id": gCorr, "mm.content_type": "application/json",
				"mm.redelivered": "false", "mm.routing_key": gReplyQ,
				"idRequest":   gIDRequest,
				"mms.isError": "true", "mms.isEnd": "true", "mms.sequence": "0",
			},
			payload: errBody,
			send: message.Metadata{
				"mm.correlation_id": gCorr, "idRequest": gIDRequest,
				"mms.isError": "true", "mms.isEnd": "true", "mms.sequence": "0",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", CorrelationId: gCorr, MessageId: gUUID,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"isError": true, "isEnd": true, "sequence": int64(0)},
				},
				Body: []byte(errBody),
			},
		},
		{
			name: "event",
			delivery: amqp.Delivery{
				ContentType: "application/json",
				Headers:     amqp.Table{"__mms": amqp.Table{}},
				Body:        []byte(`{"id":7}`), Exchange: "x.pubSub", RoutingKey: "interop.evt.created",
			},
			meta: message.Metadata{
				"mm.content_type": "application/json", "mm.redelivered": "false",
				"mm.exchange": "x.pubSub", "mm.routing_key": "interop.evt.created",
			},
			payload: `{"id":7}`,
			send:    message.Metadata{},
			publishing: amqp.Publishing{
				ContentType: "application/json", MessageId: gUUID,
				Headers: amqp.Table{"__mms": amqp.Table{}},
				Body:    []byte(`{"id":7}`),
			},
		},
		{
			name: "task",
			delivery: amqp.Delivery{
				ContentType: "application/json",
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"route": "work", "isTask": true, "iat": int64(gIAT)},
				},
				Body: []byte(`""`), RoutingKey: "q.requests.mmkit.work",
			},
			meta: message.Metadata{
				"mm.content_type": "application/json", "mm.redelivered": "false",
				"mm.routing_key": "q.requests.mmkit.work",
				"idRequest":      gIDRequest,
				"mms.route":      "work", "mms.isTask": "true", "mms.iat": "1764158400000",
			},
			payload: `""`,
			send: message.Metadata{
				"idRequest": gIDRequest,
				"mms.route": "work", "mms.isTask": "true", "mms.iat": "1764158400000",
				"mm.persistent": "true",
			},
			publishing: amqp.Publishing{
				ContentType: "application/json", MessageId: gUUID, DeliveryMode: amqp.Persistent,
				Headers: amqp.Table{
					"idRequest": gIDRequest,
					"__mms":     amqp.Table{"route": "work", "isTask": true, "iat": int64(gIAT)},
				},
				Body: []byte(`""`),
			},
		},
	}
}

func TestGoldenUnmarshal(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			msg, err := wire.Codec{}.Unmarshal(g.delivery)
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if string(msg.Payload) != g.payload {
				t.Errorf("payload %q, want %q", msg.Payload, g.payload)
			}
			if !maps.Equal(msg.Metadata, g.meta) {
				t.Errorf("metadata\n got %v\nwant %v", msg.Metadata, g.meta)
			}
			// Node sends no MessageId: the UUID is a fresh v4.
			if id, err := uuid.Parse(msg.UUID); err != nil || id.Version() != 4 {
				t.Errorf("UUID %q is not a UUID v4 (%v)", msg.UUID, err)
			}
		})
	}
}

func TestGoldenMarshal(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			msg := message.NewMessage(gUUID, []byte(g.payload))
			msg.Metadata = maps.Clone(g.send)
			p, err := wire.Codec{}.Marshal(msg)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if !reflect.DeepEqual(p, g.publishing) {
				t.Errorf("publishing\n got %#v\nwant %#v", p, g.publishing)
			}
			if !maps.Equal(msg.Metadata, g.send) {
				t.Errorf("Marshal modified the metadata: %v", msg.Metadata)
			}
		})
	}
}

// A received message sent on again gives the same publishing: receive-only keys are not
// sent, the __mms types are normalised to int64/bool.
func TestGoldenReceiveThenSend(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			msg, err := wire.Codec{}.Unmarshal(g.delivery)
			if err != nil {
				t.Fatal(err)
			}
			msg.UUID = gUUID
			p, err := wire.Codec{}.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			want := g.publishing
			want.DeliveryMode = 0 // mm.persistent is send-only: not in received metadata
			if !reflect.DeepEqual(p, want) {
				t.Errorf("publishing\n got %#v\nwant %#v", p, want)
			}
		})
	}
}

// A 1.2 MB reply arrives gzipped (the conformance big-body check) and is sent gzipped.
func TestGoldenBigBody(t *testing.T) {
	payload := []byte(`{"data":"` + strings.Repeat("x", 1_200_000) + `"}`)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(payload)
	zw.Close()
	d := amqp.Delivery{
		ContentType: "application/json", ContentEncoding: "gzip", CorrelationId: gCorr,
		Headers: amqp.Table{"idRequest": gIDRequest, "__mms": amqp.Table{"isError": false, "isEnd": true, "sequence": int8(0)}},
		Body:    z.Bytes(),
	}
	msg, err := wire.Codec{}.Unmarshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(msg.Payload, payload) {
		t.Fatalf("payload: %d bytes, want %d", len(msg.Payload), len(payload))
	}
	if got := msg.Metadata[wire.MetaContentEncoding]; got != "gzip" {
		t.Errorf("%s = %q, want gzip", wire.MetaContentEncoding, got)
	}

	p, err := wire.Codec{}.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if p.ContentEncoding != "gzip" || p.ContentType != wire.ContentType {
		t.Fatalf("ContentEncoding %q ContentType %q", p.ContentEncoding, p.ContentType)
	}
	zr, err := gzip.NewReader(bytes.NewReader(p.Body))
	if err != nil {
		t.Fatal(err)
	}
	inflated, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(inflated, payload) {
		t.Fatalf("gzipped body does not inflate to the payload (%v)", err)
	}
	if len(p.Body) >= len(payload)/10 {
		t.Errorf("gzipped body %d bytes for a %d-byte repetitive payload", len(p.Body), len(payload))
	}
}
