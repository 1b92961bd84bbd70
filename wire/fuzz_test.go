package wire_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/micromessaging/micromessaging/wire"
)

// Fuzz targets. The seed corpus is checked in under testdata/fuzz/<FuzzName>/ (written by
// TestFuzzSeedCorpus), so every `go test` replays it; run a target with
//
//	go test -run='^$' -fuzz=FuzzUnmarshal -fuzztime=60s ./wire

// FuzzUnmarshal: any delivery decodes to a message or a *DecodeError; a decoded message
// encodes to a publishing or a *MetadataError; a publishing decodes back to the same
// payload and metadata.
func FuzzUnmarshal(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, encoding string, headers, mms []byte,
		correlationID, messageID, expiration string, redelivered bool) {
		d := amqp.Delivery{
			Body: body, ContentEncoding: encoding, CorrelationId: correlationID,
			MessageId: messageID, Expiration: expiration, Redelivered: redelivered,
			ContentType: wire.ContentType,
		}
		if h, err := decodeEntries(headers, 0); err == nil {
			d.Headers = h
		}
		if len(mms) > 0 {
			if m, err := decodeEntries(mms, 0); err == nil {
				if d.Headers == nil {
					d.Headers = amqp.Table{}
				}
				d.Headers["__mms"] = m
			}
		}
		msg, err := wire.Codec{MaxInflatedBytes: 1 << 20}.Unmarshal(d)
		if err != nil {
			var de *wire.DecodeError
			if msg != nil || !errors.As(err, &de) {
				t.Fatalf("Unmarshal: %v, %v; want nil and a *DecodeError", msg, err)
			}
			return
		}
		if msg.UUID == "" || (messageID != "" && msg.UUID != messageID) {
			t.Fatalf("UUID %q, MessageId %q", msg.UUID, messageID)
		}
		if r := msg.Metadata[wire.MetaRedelivered]; r != strconv.FormatBool(redelivered) {
			t.Fatalf("mm.redelivered %q", r)
		}

		p, err := wire.Codec{}.Marshal(msg)
		if err != nil {
			var me *wire.MetadataError
			if !errors.As(err, &me) {
				t.Fatalf("Marshal: %v; want a *MetadataError", err)
			}
			return
		}
		checkPublishing(t, p)
		msg2, err := wire.Codec{}.Unmarshal(deliveryOf(p))
		if err != nil {
			t.Fatalf("Unmarshal of a Marshal result: %v", err)
		}
		wantPayload := []byte(msg.Payload)
		if len(wantPayload) == 0 {
			wantPayload = []byte(`""`)
		}
		if !bytes.Equal(msg2.Payload, wantPayload) || msg2.UUID != msg.UUID {
			t.Fatalf("round trip: payload %q UUID %q, want %q %q", msg2.Payload, msg2.UUID, wantPayload, msg.UUID)
		}
		if want, got := sentMetadata(msg.Metadata), sentMetadata(msg2.Metadata); !maps.Equal(got, want) {
			t.Fatalf("round trip metadata\n got %v\nwant %v", got, want)
		}
	})
}

// sentMetadata is the part of md that Marshal sends and Unmarshal gives back as it was.
func sentMetadata(md message.Metadata) message.Metadata {
	out := message.Metadata{}
	for k, v := range md {
		switch {
		case k == wire.MetaCorrelationID || k == wire.MetaReplyTo || k == wire.MetaExpiration:
			if v != "" {
				out[k] = v
			}
		case strings.HasPrefix(k, wire.MetaPrefix):
		case strings.HasPrefix(k, wire.MetaMMSPrefix):
			if v != "" {
				out[k] = canonicalMMS(k, v)
			}
		default:
			out[k] = v
		}
	}
	return out
}

// canonicalMMS is the form a known __mms field comes back in after the wire: integers
// as decimal int64 ("0007" -> "7"), booleans "true"/"false" ("1" -> "true").
func canonicalMMS(k, v string) string {
	switch k {
	case wire.MetaMMSIAT, wire.MetaMMSEAT, wire.MetaMMSSequence:
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return strconv.FormatInt(n, 10)
		}
	case wire.MetaMMSIsTask, wire.MetaMMSIsError, wire.MetaMMSIsEnd, wire.MetaMMSIsStream:
		if b, err := strconv.ParseBool(v); err == nil {
			return strconv.FormatBool(b)
		}
	}
	return v
}

// checkPublishing checks the wire shape of every publishing: content type, the __mms
// table with typed known fields, string user headers.
func checkPublishing(t *testing.T, p amqp.Publishing) {
	t.Helper()
	if p.ContentType != wire.ContentType {
		t.Fatalf("ContentType %q", p.ContentType)
	}
	if p.ContentEncoding != "" && p.ContentEncoding != "gzip" {
		t.Fatalf("ContentEncoding %q", p.ContentEncoding)
	}
	if len(p.Body) == 0 {
		t.Fatal("empty body")
	}
	mms, ok := p.Headers["__mms"].(amqp.Table)
	if !ok {
		t.Fatalf("__mms is %T", p.Headers["__mms"])
	}
	for k, v := range mms {
		var typeOK bool
		switch k {
		case "iat", "eat", "sequence":
			_, typeOK = v.(int64)
		case "isTask", "isError", "isEnd", "isStream":
			_, typeOK = v.(bool)
		default:
			_, typeOK = v.(string)
		}
		if !typeOK {
			t.Fatalf("__mms.%s is %T", k, v)
		}
	}
	for k, v := range p.Headers {
		if _, ok := v.(string); !ok && k != "__mms" {
			t.Fatalf("header %s is %T", k, v)
		}
	}
	if err := p.Headers.Validate(); err != nil {
		t.Fatalf("headers do not validate: %v", err)
	}
}

// FuzzMMS: any __mms table (any field types, built from bytes in the AMQP table encoding)
// decodes; MMSFromMetadata reads it or fails with a *MetadataError; an MMS survives
// SetMetadata/MMSFromMetadata; what MMSFromMetadata accepts, Marshal sends with the wire
// types and Unmarshal reads back unchanged.
func FuzzMMS(f *testing.F) {
	f.Fuzz(func(t *testing.T, table []byte) {
		tab, err := decodeEntries(table, 0)
		if err != nil {
			return
		}
		msg, err := wire.Codec{}.Unmarshal(amqp.Delivery{Headers: amqp.Table{"__mms": tab}, Body: []byte(`1`)})
		if err != nil {
			t.Fatalf("Unmarshal failed on a table: %v", err)
		}
		m, err := wire.MMSFromMetadata(msg.Metadata)
		if err != nil {
			var me *wire.MetadataError
			if !errors.As(err, &me) || !strings.HasPrefix(me.Key, wire.MetaMMSPrefix) {
				t.Fatalf("MMSFromMetadata: %v; want a *MetadataError on an mms.* key", err)
			}
			return
		}
		md := message.Metadata{}
		m.SetMetadata(md)
		m2, err := wire.MMSFromMetadata(md)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("SetMetadata/MMSFromMetadata: %+v -> %v -> %+v, %v", m, md, m2, err)
		}

		p, err := wire.Codec{}.Marshal(msg)
		if err != nil {
			t.Fatalf("Marshal of metadata MMSFromMetadata accepted: %v", err)
		}
		checkPublishing(t, p)
		back, err := wire.Codec{}.Unmarshal(deliveryOf(p))
		if err != nil {
			t.Fatal(err)
		}
		m3, err := wire.MMSFromMetadata(back.Metadata)
		if err != nil || !reflect.DeepEqual(m, m3) {
			t.Fatalf("after the wire: %+v, %v; want %+v", m3, err, m)
		}
		if want, got := sentMetadata(msg.Metadata), sentMetadata(back.Metadata); !maps.Equal(got, want) {
			t.Fatalf("mms metadata\n got %v\nwant %v", got, want)
		}
	})
}

// FuzzParseErrorBody: any payload gives a *RemoteError or a *DecodeError; a parsed error
// has a code and a level and survives ErrorBody/ParseErrorBody.
func FuzzParseErrorBody(f *testing.F) {
	f.Fuzz(func(t *testing.T, payload []byte) {
		re, err := wire.ParseErrorBody(payload)
		if err != nil {
			var de *wire.DecodeError
			if re != nil || !errors.As(err, &de) {
				t.Fatalf("%v, %v; want nil and a *DecodeError", re, err)
			}
			return
		}
		if re == nil || re.Code == 0 || re.Level == "" {
			t.Fatalf("parsed %#v", re)
		}
		_ = re.Error()
		body := wire.ErrorBody(re)
		var env struct {
			Error map[string]json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(body, &env); err != nil || string(env.Error["isCustomError"]) != "true" {
			t.Fatalf("ErrorBody gave %s (%v)", body, err)
		}
		re2, err := wire.ParseErrorBody(body)
		if err != nil || re2.Code != re.Code {
			t.Fatalf("re-parse: %#v, %v; want code %d", re2, err, re.Code)
		}
		re3, err := wire.ParseErrorBody(wire.ErrorBody(re2))
		if err != nil || !reflect.DeepEqual(re2, re3) {
			t.Fatalf("not stable: %#v -> %#v (%v)", re2, re3, err)
		}
	})
}

// FuzzGunzip: any body in any encoding decodes within the limit or fails with a
// *DecodeError; EncodeBody output always decodes back.
func FuzzGunzip(f *testing.F) {
	const limit = 1 << 20
	f.Fuzz(func(t *testing.T, body []byte, encoding string) {
		out, err := wire.DecodeBody(body, encoding, limit)
		if err != nil {
			var de *wire.DecodeError
			if out != nil || !errors.As(err, &de) {
				t.Fatalf("%d bytes, %v; want nil and a *DecodeError", len(out), err)
			}
		} else if len(out) > limit {
			t.Fatalf("inflated to %d bytes, limit %d", len(out), limit)
		}
		enc, e, err := wire.EncodeBody(body)
		if err != nil {
			t.Fatal(err)
		}
		back, err := wire.DecodeBody(enc, e, 0)
		want := body
		if len(want) == 0 {
			want = []byte(`""`)
		}
		if err != nil || !bytes.Equal(back, want) {
			t.Fatalf("EncodeBody/DecodeBody: %v", err)
		}
	})
}

// TestFuzzSeedCorpus checks that every seed of the corpus below is checked in under
// testdata/fuzz (so every `go test` replays it); with WIRE_WRITE_SEEDS=1 it rewrites them:
//
//	WIRE_WRITE_SEEDS=1 go test -run=TestFuzzSeedCorpus ./wire
//
// Seeds are compared by name, not content: seeds built from header tables encode map
// entries in random order.
func TestFuzzSeedCorpus(t *testing.T) {
	rewrite := os.Getenv("WIRE_WRITE_SEEDS") != ""
	write := func(target, name string, args ...any) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch v := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(v)))
			case string:
				fmt.Fprintf(&b, "string(%s)\n", strconv.Quote(v))
			case bool:
				fmt.Fprintf(&b, "bool(%v)\n", v)
			default:
				t.Fatalf("seed type %T", a)
			}
		}
		dir := filepath.Join("testdata", "fuzz", target)
		path := filepath.Join(dir, name)
		if !rewrite {
			got, err := os.ReadFile(path)
			if err != nil || !strings.HasPrefix(string(got), "go test fuzz v1\n") {
				t.Errorf("seed %s missing or not a corpus file (%v): rewrite with WIRE_WRITE_SEEDS=1", path, err)
			}
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}

	// FuzzUnmarshal: the golden Node messages, then malformed ones.
	for _, g := range goldens() {
		d := g.delivery
		h := maps.Clone(d.Headers)
		mms, _ := h["__mms"].(amqp.Table)
		delete(h, "__mms")
		mmsBytes := encodeEntries(mms)
		if mms != nil && len(mmsBytes) == 0 {
			mmsBytes = nil // an empty __mms: the headers seed carries it
			h["__mms"] = amqp.Table{}
		}
		write("FuzzUnmarshal", strings.ReplaceAll(g.name, " ", "-"), d.Body, d.ContentEncoding,
			encodeEntries(h), mmsBytes, d.CorrelationId, d.MessageId, d.Expiration, d.Redelivered)
	}
	write("FuzzUnmarshal", "gzip-small", gz(`{"a":"b"}`), "gzip", encodeEntries(amqp.Table{"idRequest": "r"}),
		encodeEntries(amqp.Table{"isError": false, "isEnd": true, "sequence": uint8(1)}), "c", "", "", false)
	write("FuzzUnmarshal", "odd-header-types", []byte(`[]`), "", encodeEntries(amqp.Table{
		"i8": int8(-1), "u16": uint16(7), "f32": float32(1.25), "f64": math.Inf(-1), "dec": amqp.Decimal{Scale: 1, Value: 5},
		"ts": time.Unix(1, 0), "void": nil, "bytes": []byte{0xff, 0}, "arr": []any{int16(1), "x"},
		"tab": amqp.Table{"n": amqp.Table{"deep": true}}, "mm.reply_to": "spoof", "mms.route": "spoof",
	}), encodeEntries(amqp.Table{"route": []byte("r"), "iat": float64(1.7e12), "sequence": 2.5, "isEnd": int8(1), "x": amqp.Table{}}),
		"", "mid", "10", true)
	write("FuzzUnmarshal", "mms-not-a-table", []byte(`1`), "", encodeEntries(amqp.Table{"__mms": "route=x"}), []byte(nil), "", "", "", false)
	write("FuzzUnmarshal", "unknown-encoding", []byte(`1`), "br", []byte(nil), []byte(nil), "", "", "", false)
	write("FuzzUnmarshal", "bad-expiration", []byte(``), "", []byte(nil), encodeEntries(amqp.Table{"iat": "soon"}), "", "", "-1", false)

	// FuzzMMS: every shape and every integer width.
	for name, tab := range map[string]amqp.Table{
		"request":      {"route": "echo", "iat": int64(gIAT), "eat": int64(gIAT + 300)},
		"task":         {"route": "work", "isTask": true, "iat": int64(gIAT)},
		"reply":        {"isError": false, "isEnd": true, "sequence": int8(0)},
		"chunk":        {"isError": false, "isEnd": false, "isStream": true, "sequence": int16(300)},
		"widths":       {"iat": int32(5), "eat": uint32(7), "sequence": uint16(9)},
		"floats":       {"iat": float64(1.7e12), "eat": float32(3), "sequence": 1.5},
		"unknown":      {"custom": "v", "n": uint8(3), "t": amqp.Table{"a": []any{nil}}},
		"wrong-types":  {"route": int8(1), "isEnd": "yes", "isTask": int8(1), "isStream": nil},
		"event":        {},
		"bytes-values": {"route": []byte("r"), "iat": []byte("12")},
	} {
		write("FuzzMMS", name, encodeEntries(tab))
	}

	// FuzzParseErrorBody.
	for name, body := range map[string]string{
		"node":           `{"error":{"message":"failed on purpose","codeString":"boom","code":418,"info":{"x":1},"level":"fatal","stack":"Error: x","isCustomError":true}}`,
		"code-float":     `{"error":{"message":"m","code":404.5}}`,
		"code-string":    `{"error":{"code":"409"}}`,
		"error-string":   `{"error":"boom"}`,
		"bare-object":    `{"message":"m","code":401}`,
		"bare-string":    `"timeout"`,
		"null":           `{"error":null}`,
		"info-huge":      `{"error":{"info":[1e400,"\u00ff"]}}`,
		"not-json":       `<html>`,
		"non-string-all": `{"error":{"message":{"a":1},"codeString":7,"level":false,"stack":[1],"code":true}}`,
	} {
		write("FuzzParseErrorBody", name, []byte(body))
	}

	// FuzzGunzip.
	bomb := func() []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write(make([]byte, 2<<20))
		w.Close()
		return b.Bytes()
	}()
	small := gz(`{"a":1}`)
	write("FuzzGunzip", "gzip", small, "gzip")
	write("FuzzGunzip", "multi-member", append(gz(`[1,`), gz(`2]`)...), "gzip")
	write("FuzzGunzip", "truncated", small[:len(small)-3], "gzip")
	write("FuzzGunzip", "over-limit", bomb, "gzip")
	write("FuzzGunzip", "identity", []byte(`{"a":1}`), "")
	write("FuzzGunzip", "unknown", small, "deflate")
	write("FuzzGunzip", "empty", []byte{}, "x-gzip")
}
