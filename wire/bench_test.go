package wire_test

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// A request as the Go client sends it, with a 256-byte payload.
func benchRequest() *message.Message {
	msg := message.NewMessage(gUUID, bytes.Repeat([]byte("a"), 256))
	msg.Metadata = message.Metadata{
		wire.MetaCorrelationID: gCorr, wire.MetaReplyTo: gReplyQ, wire.MetaExpiration: "5000",
		wire.HeaderIDRequest: gIDRequest,
		wire.MetaMMSRoute:    "echo", wire.MetaMMSIAT: strconv.Itoa(gIAT), wire.MetaMMSEAT: strconv.Itoa(gIAT + 5000),
	}
	return msg
}

// A request as the Node client sends it (no MessageId), with a 256-byte payload.
func benchDelivery() amqp.Delivery {
	return amqp.Delivery{
		ContentType: "application/json", CorrelationId: gCorr, ReplyTo: gReplyQ, Expiration: "5000",
		Headers: amqp.Table{
			"idRequest": gIDRequest,
			"__mms":     amqp.Table{"route": "echo", "iat": int64(gIAT), "eat": int64(gIAT + 5000)},
		},
		Body: bytes.Repeat([]byte("a"), 256), RoutingKey: "q.requests.svc.echo", DeliveryTag: 7,
	}
}

func BenchmarkMarshal(b *testing.B) {
	msg := benchRequest()
	var c wire.Codec
	b.ReportAllocs()
	b.SetBytes(int64(len(msg.Payload)))
	for b.Loop() {
		if _, err := c.Marshal(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	b.Run("node-no-message-id", func(b *testing.B) {
		d := benchDelivery()
		var c wire.Codec
		b.ReportAllocs()
		b.SetBytes(int64(len(d.Body)))
		for b.Loop() {
			if _, err := c.Unmarshal(d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-message-id", func(b *testing.B) {
		d := benchDelivery()
		d.MessageId = gUUID
		var c wire.Codec
		b.ReportAllocs()
		b.SetBytes(int64(len(d.Body)))
		for b.Loop() {
			if _, err := c.Unmarshal(d); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Bodies over the threshold: the cost of gzip on send and gunzip on receive.
func BenchmarkGzipBody(b *testing.B) {
	payload := []byte(`{"rows":[`)
	for i := 0; len(payload) < 1_200_000; i++ {
		payload = append(payload, `{"id":`+strconv.Itoa(i)+`,"name":"user-`+strconv.Itoa(i*7919)+`","active":true},`...)
	}
	payload = append(payload[:len(payload)-1], "]}"...)
	body, enc, err := wire.EncodeBody(payload)
	if err != nil || enc != "gzip" {
		b.Fatal(err, enc)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			wire.EncodeBody(payload)
		}
		b.ReportMetric(float64(len(body))/float64(len(payload)), "ratio")
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			if _, err := wire.DecodeBody(body, enc, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
