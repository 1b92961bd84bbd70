package wire

import (
	"errors"
	"strconv"
)

// Sentinel errors. They are returned wrapped in a *DecodeError or *MetadataError; match
// them with errors.Is.
var (
	// ErrContentEncoding: a delivery's ContentEncoding is neither empty, "identity" nor
	// gzip.
	ErrContentEncoding = errors.New("unsupported content encoding")
	// ErrBodyTooLarge: a gzipped body inflates beyond the limit (Codec.MaxInflatedBytes,
	// DefaultMaxInflatedBytes).
	ErrBodyTooLarge = errors.New("inflated body exceeds the limit")
	// ErrMMSNotTable: the __mms header is present but not a field table.
	ErrMMSNotTable = errors.New("__mms header is not a field table")
	// ErrNotErrorEnvelope: an error reply body that holds no error.
	ErrNotErrorEnvelope = errors.New("not an error envelope")
	// ErrInvalidValue: a metadata value the wire cannot carry (bad integer or boolean,
	// bad expiration, reserved key).
	ErrInvalidValue = errors.New("invalid value")
	// ErrTooLong: a header name or property longer than the 255 bytes an AMQP short
	// string holds (header names, correlation id, reply-to, message id).
	ErrTooLong = errors.New("longer than 255 bytes")
	// ErrNilMessage: Marshal was given a nil message.
	ErrNilMessage = errors.New("wire: nil message")
)

// DecodeError reports input received from the wire that cannot be decoded: a bad body
// (gzip), an unknown content encoding, a malformed __mms header or error envelope.
// What names the part; Err is the cause (often one of the sentinels above).
type DecodeError struct {
	What string
	Err  error
}

func (e *DecodeError) Error() string {
	if e.Err == nil {
		return "wire: decode " + e.What
	}
	return "wire: decode " + e.What + ": " + e.Err.Error()
}

func (e *DecodeError) Unwrap() error { return e.Err }

// MetadataError reports a Watermill metadata value that cannot be put on the wire (from
// Codec.Marshal) or read as its __mms type (from MMSFromMetadata): for example mms.iat
// "soon" or mm.expiration "-1". Err wraps ErrInvalidValue or ErrTooLong and, for numbers
// and booleans, the strconv error.
type MetadataError struct {
	Key, Value string
	Err        error
}

func (e *MetadataError) Error() string {
	v := e.Value
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return "wire: metadata " + strconv.Quote(e.Key) + "=" + strconv.Quote(v) + ": " + e.Err.Error()
}

func (e *MetadataError) Unwrap() error { return e.Err }
