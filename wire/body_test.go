package wire_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"strings"
	"testing"

	"github.com/micromessaging/micromessaging/wire"
)

func TestJSON(t *testing.T) {
	for _, c := range []struct {
		v    any
		want string
	}{
		{nil, `""`},
		{"", `""`},
		{map[string]string{"a": "<b>&c</b>"}, `{"a":"<b>&c</b>"}`},
		{[]any{1, "x"}, `[1,"x"]`},
		{struct {
			A int `json:"a"`
		}{7}, `{"a":7}`},
		{(*int)(nil), `null`},
	} {
		got, err := wire.JSON(c.v)
		if err != nil || string(got) != c.want {
			t.Errorf("JSON(%#v) = %s, %v; want %s", c.v, got, err, c.want)
		}
	}
	if _, err := wire.JSON(make(chan int)); err == nil {
		t.Error("JSON(chan) did not fail")
	}
}

func TestEncodeBody(t *testing.T) {
	body, enc, err := wire.EncodeBody(nil)
	if err != nil || string(body) != `""` || enc != "" {
		t.Errorf("nil payload: %q %q %v", body, enc, err)
	}
	body, enc, _ = wire.EncodeBody([]byte{})
	if string(body) != `""` || enc != "" {
		t.Errorf("empty payload: %q %q", body, enc)
	}

	at := bytes.Repeat([]byte("a"), wire.GzipThreshold)
	body, enc, err = wire.EncodeBody(at)
	if err != nil || enc != "" || &body[0] != &at[0] || len(body) != len(at) {
		t.Errorf("%d bytes: encoding %q, same slice %v, %v", len(at), enc, &body[0] == &at[0], err)
	}

	over := bytes.Repeat([]byte("a"), wire.GzipThreshold+1)
	body, enc, err = wire.EncodeBody(over)
	if err != nil || enc != "gzip" {
		t.Fatalf("%d bytes: encoding %q, %v", len(over), enc, err)
	}
	back, err := wire.DecodeBody(body, enc, 0)
	if err != nil || !bytes.Equal(back, over) {
		t.Fatalf("round trip: %v", err)
	}
	if over[0] != 'a' || len(over) != wire.GzipThreshold+1 {
		t.Error("EncodeBody modified its input")
	}
}

func TestDecodeBody(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	small := gz(`{"a":1}`) // gzip is accepted at any size
	for _, enc := range []string{"gzip", "GZIP", "x-gzip"} {
		if got, err := wire.DecodeBody(small, enc, 0); err != nil || string(got) != `{"a":1}` {
			t.Errorf("%s: %q %v", enc, got, err)
		}
	}
	two := append(gz(`[1,`), gz(`2]`)...) // concatenated gzip members
	if got, err := wire.DecodeBody(two, "gzip", 0); err != nil || string(got) != `[1,2]` {
		t.Errorf("multi-member: %q %v", got, err)
	}
	for _, enc := range []string{"", "identity"} {
		in := []byte("not json, passed through")
		if got, err := wire.DecodeBody(in, enc, 0); err != nil || &got[0] != &in[0] {
			t.Errorf("%q: %v", enc, err)
		}
	}

	big := gz(strings.Repeat("z", 4096))
	if got, err := wire.DecodeBody(big, "gzip", 4096); err != nil || len(got) != 4096 {
		t.Errorf("at the limit: %d %v", len(got), err)
	}
	bad := []struct {
		name string
		body []byte
		enc  string
		max  int64
		is   error
	}{
		{"over the limit", big, "gzip", 4095, wire.ErrBodyTooLarge},
		{"deflate", small, "deflate", 0, wire.ErrContentEncoding},
		{"br", small, "br", 0, wire.ErrContentEncoding},
		{"not gzip", []byte(`{"a":1}`), "gzip", 0, nil},
		{"truncated", small[:len(small)-5], "gzip", 0, nil},
		{"trailing garbage", append(bytes.Clone(small), "junk"...), "gzip", 0, nil},
		{"empty", nil, "gzip", 0, nil},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			got, err := wire.DecodeBody(c.body, c.enc, c.max)
			var de *wire.DecodeError
			if got != nil || !errors.As(err, &de) {
				t.Fatalf("got %q, %v; want a *DecodeError", got, err)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("%v is not %v", err, c.is)
			}
		})
	}
}

// A gzip bomb is refused at the limit without inflating it fully.
func TestDecodeBodyBomb(t *testing.T) {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 64 { // 64 MiB of zeros in ~64 KiB
		w.Write(zeros)
	}
	w.Close()
	_, err := wire.DecodeBody(b.Bytes(), "gzip", 8<<20)
	if !errors.Is(err, wire.ErrBodyTooLarge) {
		t.Fatalf("got %v, want ErrBodyTooLarge", err)
	}
}
