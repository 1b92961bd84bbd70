package wire

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
)

// DefaultMaxInflatedBytes is the size a gzipped body may inflate to when
// Codec.MaxInflatedBytes is zero (512 MiB). A body that would inflate beyond it is refused
// with a *DecodeError wrapping ErrBodyTooLarge.
const DefaultMaxInflatedBytes = 512 << 20

// GzipLevel is the compression level of gzipped bodies: gzip.BestSpeed. Bodies over
// GzipThreshold are compressed on the publishing path, so speed matters more than the
// last percent of size; any level is valid gzip for the Node peer.
const GzipLevel = gzip.BestSpeed

// emptyBody is what an absent body is sent as: the JSON string "" (as Node does).
const emptyBody = `""`

// JSON serializes v like JavaScript's JSON.stringify: no HTML escaping of <, > and &, no
// trailing newline; an untyped nil becomes the two bytes `""` (Node's absent body).
// Values encoding/json cannot encode (channels, functions, NaN) return its error.
func JSON(v any) ([]byte, error) {
	if v == nil {
		return []byte(emptyBody), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// EncodeBody returns the AMQP body and content encoding for a payload, as Codec.Marshal
// sends it: an empty payload becomes `""`; a payload of at most GzipThreshold bytes is
// returned as it is (the same slice, not copied); a longer one is gzipped with encoding
// "gzip". The payload is not validated or re-encoded as JSON.
func EncodeBody(payload []byte) (body []byte, encoding string, err error) {
	if len(payload) == 0 {
		return []byte(emptyBody), "", nil
	}
	if len(payload) <= GzipThreshold {
		return payload, "", nil
	}
	w := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(w)
	var out bytes.Buffer
	out.Grow(len(payload)/4 + 64)
	w.Reset(&out)
	if _, err := w.Write(payload); err != nil {
		return nil, "", fmt.Errorf("wire: gzip body: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, "", fmt.Errorf("wire: gzip body: %w", err)
	}
	w.Reset(io.Discard) // drop the reference to out
	return out.Bytes(), "gzip", nil
}

// DecodeBody returns the payload of a body received with the given content encoding:
// "" and "identity" as they are (the same slice), "gzip" (also "x-gzip", any case)
// inflated at any size but to at most max bytes (max <= 0 means
// DefaultMaxInflatedBytes). Errors are *DecodeError, wrapping ErrContentEncoding,
// ErrBodyTooLarge or the gzip error.
func DecodeBody(body []byte, encoding string, max int64) ([]byte, error) {
	switch {
	case encoding == "" || strings.EqualFold(encoding, "identity"):
		return body, nil
	case strings.EqualFold(encoding, "gzip") || strings.EqualFold(encoding, "x-gzip"):
		return gunzip(body, max)
	}
	return nil, &DecodeError{What: "body", Err: fmt.Errorf("%w %q", ErrContentEncoding, encoding)}
}

var (
	gzipWriters = sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(io.Discard, GzipLevel) // the level is valid: no error
		return w
	}}
	gzipReaders sync.Pool // *gzip.Reader
)

// maxDeflateRatio bounds how much deflate can expand its input (about 1032:1); used to
// keep the preallocation hint of an inflated body honest.
const maxDeflateRatio = 1032

func gunzip(body []byte, max int64) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxInflatedBytes
	}
	src := bytes.NewReader(body)
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(src)
	} else {
		err = zr.Reset(src)
	}
	if err != nil {
		return nil, &DecodeError{What: "gzip body", Err: err}
	}
	defer gzipReaders.Put(zr)

	// Preallocate from the gzip trailer (ISIZE: inflated size mod 2^32 of the last
	// member), trusting it no further than the limit and deflate's maximum ratio allow.
	hint := int64(512)
	if len(body) >= 18 {
		isize := int64(binary.LittleEndian.Uint32(body[len(body)-4:]))
		hint = min(isize+1, max+1, int64(len(body))*maxDeflateRatio+1)
	}
	out := make([]byte, 0, hint)
	for {
		if len(out) == cap(out) {
			out = append(out, 0)[:len(out)]
		}
		room := min(int64(cap(out)-len(out)), max+1-int64(len(out)))
		n, rerr := zr.Read(out[len(out) : len(out)+int(room)])
		out = out[:len(out)+n]
		if int64(len(out)) > max {
			return nil, &DecodeError{What: "gzip body", Err: fmt.Errorf("%w (%d bytes)", ErrBodyTooLarge, max)}
		}
		if rerr == io.EOF {
			return out, nil
		}
		if rerr != nil {
			return nil, &DecodeError{What: "gzip body", Err: rerr}
		}
	}
}
