package wire_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

func TestNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{wire.RequestQueue("svc", "echo"), "q.requests.svc.echo"},
		{wire.ReplyQueue("svc", "id-1"), "q.replyQueue.svc.id-1"},
		{wire.ListenQueue("svc", "u-2"), "q.pubSub.svc.u-2"},
		{wire.LockQueue("svc"), "internal.svc.lock"},
		{wire.EventKey("interop", "evt.created"), "interop.evt.created"},
		{wire.EventExchange, "x.pubSub"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	args := wire.RequestQueueArgs()
	if v, ok := args["x-expires"].(int32); !ok || v != 86_400_000 || len(args) != 1 {
		t.Errorf("RequestQueueArgs = %#v", args)
	}
	args["x-expires"] = int64(1) // callers may modify: the next call gets a fresh map
	if _, ok := wire.RequestQueueArgs()["x-expires"].(int32); !ok {
		t.Error("RequestQueueArgs returned a shared map")
	}
}

// Every AMQP integer width (and integral floats) decodes to decimal, in __mms and in
// user headers.
func TestUnmarshalValueRendering(t *testing.T) {
	cases := []struct {
		name string
		v    any
		want string
	}{
		{"int8", int8(-5), "-5"},
		{"int16", int16(300), "300"},
		{"int32", int32(-70000), "-70000"},
		{"int64", int64(1764158400300), "1764158400300"},
		{"int", int(42), "42"},
		{"uint8", uint8(200), "200"},
		{"uint16", uint16(65535), "65535"},
		{"uint32", uint32(4294967295), "4294967295"},
		{"float64 integral", float64(1764158400300), "1764158400300"},
		{"float64", 1.5, "1.5"},
		{"float64 huge", 1e21, "1e+21"},
		{"float64 NaN", math.NaN(), "NaN"},
		{"float32", float32(2.5), "2.5"},
		{"bool true", true, "true"},
		{"bool false", false, "false"},
		{"nil", nil, ""},
		{"string", "s", "s"},
		{"bytes", []byte("raw"), "raw"},
		{"table", amqp.Table{"b": int8(1), "a": "<&>", "c": amqp.Table{}}, `{"a":"<&>","b":1,"c":{}}`},
		{"map", map[string]any{"k": []any{}}, `{"k":[]}`},
		{"array", []any{int32(1), "x\"\n", nil, true, 2.5, math.Inf(1), []byte("b")}, `[1,"x\"\n",null,true,2.5,null,"b"]`},
		{"invalid utf8 in json", []any{"a\xffb"}, `["a` + "\ufffd" + `b"]`},
		{"decimal", amqp.Decimal{Scale: 2, Value: 12345}, "123.45"},
		{"decimal small", amqp.Decimal{Scale: 3, Value: -5}, "-0.005"},
		{"decimal scale 0", amqp.Decimal{Value: 7}, "7"},
		{"timestamp", time.Unix(1764158400, 0), "2025-11-26T12:00:00Z"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := amqp.Delivery{
				Headers: amqp.Table{"h": c.v, "__mms": amqp.Table{"sequence": c.v, "x": c.v}},
				Body:    []byte(`1`),
			}
			msg, err := wire.Codec{}.Unmarshal(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"h", "mms.sequence", "mms.x"} {
				got, ok := msg.Metadata[k]
				if !ok || got != c.want {
					t.Errorf("%s = %q (present %v), want %q", k, got, ok, c.want)
				}
			}
		})
	}
}

func TestUnmarshalProperties(t *testing.T) {
	d := amqp.Delivery{
		MessageId: "mid", CorrelationId: "c", ReplyTo: "r", Expiration: "5",
		ContentType: "text/plain", // not enforced on receive
		Exchange:    "x", RoutingKey: "k", Redelivered: true,
		Headers: amqp.Table{
			"mm.reply_to": "spoofed", "mms.route": "spoofed", "mm.other": "x", // reserved names: dropped
			"__mms": map[string]any{"route": "r1"}, // a plain map works as well as amqp.Table
		},
		Body: []byte(`{}`),
	}
	msg, err := wire.Codec{}.Unmarshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want := message.Metadata{
		wire.MetaCorrelationID: "c", wire.MetaReplyTo: "r", wire.MetaExpiration: "5",
		wire.MetaContentType: "text/plain", wire.MetaExchange: "x", wire.MetaRoutingKey: "k",
		wire.MetaRedelivered: "true", wire.MetaMMSRoute: "r1",
	}
	if msg.UUID != "mid" {
		t.Errorf("UUID %q, want MessageId", msg.UUID)
	}
	if len(msg.Metadata) != len(want) {
		t.Errorf("metadata %v, want %v", msg.Metadata, want)
	}
	for k, v := range want {
		if msg.Metadata[k] != v {
			t.Errorf("%s = %q, want %q", k, msg.Metadata[k], v)
		}
	}
}

func TestUnmarshalWatermillUUIDHeader(t *testing.T) {
	d := amqp.Delivery{Headers: amqp.Table{wire.WatermillUUIDHeader: "wm-uuid", "h": "v"}, Body: []byte(`1`)}
	msg, err := wire.Codec{}.Unmarshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if msg.UUID != "wm-uuid" {
		t.Errorf("UUID %q", msg.UUID)
	}
	if _, ok := msg.Metadata[wire.WatermillUUIDHeader]; ok || msg.Metadata["h"] != "v" {
		t.Errorf("metadata %v", msg.Metadata)
	}
	// MessageId wins; the header is then an ordinary header.
	d.MessageId = "mid"
	msg, _ = wire.Codec{}.Unmarshal(d)
	if msg.UUID != "mid" || msg.Metadata[wire.WatermillUUIDHeader] != "wm-uuid" {
		t.Errorf("UUID %q metadata %v", msg.UUID, msg.Metadata)
	}
}

func TestUnmarshalMissingMMS(t *testing.T) {
	for _, h := range []amqp.Table{nil, {}, {"__mms": nil}} {
		msg, err := wire.Codec{}.Unmarshal(amqp.Delivery{Headers: h})
		if err != nil {
			t.Fatalf("%v: %v", h, err)
		}
		for k := range msg.Metadata {
			if strings.HasPrefix(k, wire.MetaMMSPrefix) {
				t.Errorf("%v: unexpected %s", h, k)
			}
		}
		if len(msg.Payload) != 0 {
			t.Errorf("payload %q", msg.Payload)
		}
	}
}

func TestUnmarshalErrors(t *testing.T) {
	cases := []struct {
		name string
		d    amqp.Delivery
		is   error
	}{
		{"mms not a table", amqp.Delivery{Headers: amqp.Table{"__mms": "route=x"}}, wire.ErrMMSNotTable},
		{"mms array", amqp.Delivery{Headers: amqp.Table{"__mms": []any{}}}, wire.ErrMMSNotTable},
		{"unknown encoding", amqp.Delivery{ContentEncoding: "br", Body: []byte("x")}, wire.ErrContentEncoding},
		{"bad gzip", amqp.Delivery{ContentEncoding: "gzip", Body: []byte(`{"a":1}`)}, nil},
		{"empty gzip", amqp.Delivery{ContentEncoding: "gzip"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, err := wire.Codec{}.Unmarshal(c.d)
			var de *wire.DecodeError
			if msg != nil || !errors.As(err, &de) {
				t.Fatalf("got %v, %v; want a *DecodeError", msg, err)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("%v is not %v", err, c.is)
			}
		})
	}
}

func TestMarshalProperties(t *testing.T) {
	msg := message.NewMessage("u1", []byte(`{"x":1}`))
	msg.Metadata = message.Metadata{
		wire.MetaCorrelationID: "c", wire.MetaReplyTo: "r", wire.MetaExpiration: "0",
		// receive-only and unknown mm.* keys are not sent
		wire.MetaContentType: "text/plain", wire.MetaContentEncoding: "gzip", wire.MetaRedelivered: "true",
		wire.MetaRoutingKey: "k", wire.MetaExchange: "x", "mm.unknown": "z",
		"mms.custom": "v", "mms.empty": "", wire.MetaMMSEAT: "",
		"user": "h",
	}
	p, err := wire.Codec{}.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if p.CorrelationId != "c" || p.ReplyTo != "r" || p.Expiration != "0" || p.MessageId != "u1" ||
		p.ContentType != wire.ContentType || p.ContentEncoding != "" || p.DeliveryMode != 0 {
		t.Errorf("properties %+v", p)
	}
	if len(p.Headers) != 2 || p.Headers["user"] != "h" {
		t.Errorf("headers %#v", p.Headers)
	}
	mms, _ := p.Headers["__mms"].(amqp.Table)
	if len(mms) != 1 || mms["custom"] != "v" {
		t.Errorf("__mms %#v", mms)
	}

	for _, c := range []struct {
		codec wire.Codec
		meta  string
		want  uint8
	}{
		{wire.Codec{}, "", 0},
		{wire.Codec{}, "false", 0},
		{wire.Codec{}, "true", amqp.Persistent},
		{wire.Codec{Persistent: true}, "", amqp.Persistent},
		{wire.Codec{Persistent: true}, "false", amqp.Persistent},
	} {
		m := message.NewMessage("u", []byte("1"))
		if c.meta != "" {
			m.Metadata[wire.MetaPersistent] = c.meta
		}
		p, err := c.codec.Marshal(m)
		if err != nil || p.DeliveryMode != c.want {
			t.Errorf("%+v mm.persistent=%q: DeliveryMode %d, %v; want %d", c.codec, c.meta, p.DeliveryMode, err, c.want)
		}
	}
}

func TestMarshalErrors(t *testing.T) {
	long := strings.Repeat("k", 256)
	cases := map[string]message.Metadata{
		"iat not int":        {wire.MetaMMSIAT: "soon"},
		"eat float":          {wire.MetaMMSEAT: "1.5"},
		"sequence overflow":  {wire.MetaMMSSequence: "9223372036854775808"},
		"isEnd not bool":     {wire.MetaMMSIsEnd: "yes"},
		"isStream not bool":  {wire.MetaMMSIsStream: "2"},
		"isTask not bool":    {wire.MetaMMSIsTask: "maybe"},
		"isError not bool":   {wire.MetaMMSIsError: "-"},
		"expiration neg":     {wire.MetaExpiration: "-1"},
		"expiration words":   {wire.MetaExpiration: "5s"},
		"expiration big":     {wire.MetaExpiration: "4294967296"},
		"persistent garbage": {wire.MetaPersistent: "yes please"},
		"reserved __mms":     {"__mms": "x"},
		"long header name":   {long: "v"},
		"long mms name":      {"mms." + long: "v"},
		"long correlation":   {wire.MetaCorrelationID: long},
		"long reply_to":      {wire.MetaReplyTo: long},
	}
	for name, md := range cases {
		t.Run(name, func(t *testing.T) {
			msg := message.NewMessage("u", nil)
			msg.Metadata = md
			_, err := wire.Codec{}.Marshal(msg)
			var me *wire.MetadataError
			if !errors.As(err, &me) {
				t.Fatalf("err %v, want *MetadataError", err)
			}
			if !errors.Is(err, wire.ErrInvalidValue) && !errors.Is(err, wire.ErrTooLong) {
				t.Errorf("%v wraps neither ErrInvalidValue nor ErrTooLong", err)
			}
		})
	}
	if _, err := (wire.Codec{}).Marshal(nil); !errors.Is(err, wire.ErrNilMessage) {
		t.Errorf("Marshal(nil): %v", err)
	}
	if _, err := (wire.Codec{}).Marshal(message.NewMessage(long, nil)); !errors.Is(err, wire.ErrTooLong) {
		t.Errorf("long UUID: %v", err)
	}
}

// The limit on inflated bodies is enforced exactly.
func TestUnmarshalInflateLimit(t *testing.T) {
	payload := []byte(strings.Repeat("a", wire.GzipThreshold+1))
	p, err := wire.Codec{}.Marshal(message.NewMessage("u", payload))
	if err != nil || p.ContentEncoding != "gzip" {
		t.Fatal(err, p.ContentEncoding)
	}
	d := deliveryOf(p)
	if _, err := (wire.Codec{MaxInflatedBytes: int64(len(payload))}).Unmarshal(d); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	_, err = wire.Codec{MaxInflatedBytes: int64(len(payload)) - 1}.Unmarshal(d)
	var de *wire.DecodeError
	if !errors.As(err, &de) || !errors.Is(err, wire.ErrBodyTooLarge) {
		t.Errorf("one byte over the limit: %v", err)
	}
}

// An absent payload is sent as `""` (Node's absent body); the publishing does not share
// memory with a constant, so callers may modify it.
func TestMarshalEmptyPayload(t *testing.T) {
	for _, payload := range [][]byte{nil, {}} {
		p, err := wire.Codec{}.Marshal(message.NewMessage("u", payload))
		if err != nil || string(p.Body) != `""` || p.ContentEncoding != "" {
			t.Fatalf("payload %#v: body %q encoding %q, %v", payload, p.Body, p.ContentEncoding, err)
		}
		p.Body[0] = 'x'
	}
	p, _ := wire.Codec{}.Marshal(message.NewMessage("u", nil))
	if string(p.Body) != `""` {
		t.Errorf("body %q after a caller modified an earlier one", p.Body)
	}
}
