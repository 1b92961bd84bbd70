package wire

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Watermill metadata keys that the Codec maps to/from AMQP properties. All other metadata
// keys are plain AMQP headers (user headers, sent as strings; non-string header values
// received from the wire are rendered as strings, tables/arrays as JSON).
const (
	MetaCorrelationID   = "mm.correlation_id"   // <-> Publishing.CorrelationId
	MetaReplyTo         = "mm.reply_to"         // <-> ReplyTo
	MetaExpiration      = "mm.expiration"       // <-> Expiration (decimal ms string)
	MetaPersistent      = "mm.persistent"       // "true" -> DeliveryMode 2 (send only)
	MetaContentEncoding = "mm.content_encoding" // receive only: encoding as it arrived ("gzip")
	MetaContentType     = "mm.content_type"     // receive only: content type as it arrived
	MetaRedelivered     = "mm.redelivered"      // receive only: "true"/"false"
	MetaRoutingKey      = "mm.routing_key"      // receive only
	MetaExchange        = "mm.exchange"         // receive only
	// MetaMMSPrefix prefixes the __mms fields: mms.route, mms.iat, mms.eat, mms.isTask,
	// mms.isError, mms.isEnd, mms.isStream, mms.sequence (constants MetaMMSRoute...);
	// unknown __mms keys pass through as mms.<key>.
	MetaMMSPrefix = "mms."

	// MetaPrefix is the prefix of the metadata keys the Codec reserves for AMQP
	// properties. Keys with this prefix that are not listed above are never sent.
	MetaPrefix = "mm."
)

// WatermillUUIDHeader is the header in which watermill-amqp's DefaultMarshaler sends the
// message UUID. Unmarshal takes the UUID from it when MessageId is empty.
const WatermillUUIDHeader = "_watermill_message_uuid"

// Codec converts between Watermill messages and AMQP messages in the micromessaging v3
// wire format. It satisfies watermill-amqp v3's amqp.Marshaler. The zero value is ready
// to use; a Codec holds no state and is safe for concurrent use.
type Codec struct {
	// Persistent sets DeliveryMode 2 (persistent) on every message. false: DeliveryMode
	// is left unset (transient) unless the message has mm.persistent "true".
	Persistent bool
	// MaxInflatedBytes bounds the size a gzipped body may inflate to on Unmarshal.
	// 0 means DefaultMaxInflatedBytes (512 MiB).
	MaxInflatedBytes int64
}

// Marshal converts msg to an AMQP publishing:
//
//   - Body: the payload as it is (not copied, not validated as JSON); an empty payload
//     is sent as `""`; a payload longer than GzipThreshold is gzipped with
//     ContentEncoding "gzip".
//   - ContentType is always application/json; MessageId is msg.UUID.
//   - mm.correlation_id, mm.reply_to, mm.expiration set the properties of the same name
//     (empty = unset); mm.persistent "true" (or Codec.Persistent) sets DeliveryMode 2.
//     Other mm.* keys, the receive-only ones included, are not sent.
//   - mms.<name> keys go into the __mms table, typed: iat, eat, sequence as int64;
//     isTask, isError, isEnd, isStream as bool; route and unknown names as strings. An
//     empty value is not sent. __mms is always present (empty for events).
//   - Every other key is a header with a string value (idRequest included).
//
// Errors: ErrNilMessage, or a *MetadataError for a value the wire cannot carry (an mms.*
// value that does not parse for its type, an mm.expiration that is not a decimal uint32,
// an mm.persistent that is not a boolean, a header name or property over 255 bytes, a
// metadata key "__mms").
func (c Codec) Marshal(msg *message.Message) (amqp.Publishing, error) {
	if msg == nil {
		return amqp.Publishing{}, ErrNilMessage
	}
	nHeaders, nMMS := 1, 0
	for k := range msg.Metadata {
		if strings.HasPrefix(k, MetaMMSPrefix) {
			nMMS++
		} else {
			nHeaders++
		}
	}
	headers := make(amqp.Table, nHeaders)
	mms := make(amqp.Table, nMMS)
	p := amqp.Publishing{ContentType: ContentType, MessageId: msg.UUID}
	if len(msg.UUID) > 255 {
		return amqp.Publishing{}, &MetadataError{Key: "UUID", Value: msg.UUID, Err: ErrTooLong}
	}
	if c.Persistent {
		p.DeliveryMode = amqp.Persistent
	}
	for k, v := range msg.Metadata {
		switch {
		case strings.HasPrefix(k, MetaMMSPrefix):
			if v == "" {
				continue
			}
			name := k[len(MetaMMSPrefix):]
			if len(name) > 255 {
				return amqp.Publishing{}, &MetadataError{Key: k, Value: v, Err: ErrTooLong}
			}
			wv, err := mmsWireValue(k, name, v)
			if err != nil {
				return amqp.Publishing{}, err
			}
			mms[name] = wv
		case strings.HasPrefix(k, MetaPrefix):
			if err := setProperty(&p, k, v); err != nil {
				return amqp.Publishing{}, err
			}
		case k == HeaderMMS:
			return amqp.Publishing{}, &MetadataError{Key: k, Value: v, Err: fmt.Errorf("%w: reserved key", ErrInvalidValue)}
		default:
			if len(k) > 255 {
				return amqp.Publishing{}, &MetadataError{Key: k, Value: v, Err: ErrTooLong}
			}
			headers[k] = v
		}
	}
	headers[HeaderMMS] = mms
	p.Headers = headers
	body, encoding, err := EncodeBody(msg.Payload)
	if err != nil {
		return amqp.Publishing{}, err
	}
	p.Body, p.ContentEncoding = body, encoding
	return p, nil
}

// setProperty applies one mm.* metadata key to p; keys that are receive-only or unknown
// are ignored.
func setProperty(p *amqp.Publishing, k, v string) error {
	switch k {
	case MetaCorrelationID:
		if len(v) > 255 {
			return &MetadataError{Key: k, Value: v, Err: ErrTooLong}
		}
		p.CorrelationId = v
	case MetaReplyTo:
		if len(v) > 255 {
			return &MetadataError{Key: k, Value: v, Err: ErrTooLong}
		}
		p.ReplyTo = v
	case MetaExpiration:
		if v == "" {
			return nil
		}
		// RabbitMQ closes the channel on an expiration that is not a decimal integer
		// in [0, 2^32-1]: refuse it here instead.
		if _, err := strconv.ParseUint(v, 10, 32); err != nil {
			return &MetadataError{Key: k, Value: v, Err: fmt.Errorf("%w: want milliseconds in decimal: %w", ErrInvalidValue, err)}
		}
		p.Expiration = v
	case MetaPersistent:
		if v == "" {
			return nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return &MetadataError{Key: k, Value: v, Err: fmt.Errorf("%w: want a boolean: %w", ErrInvalidValue, err)}
		}
		if b {
			p.DeliveryMode = amqp.Persistent
		}
	}
	return nil
}

// Unmarshal converts a delivery to a Watermill message:
//
//   - Payload: the body, gunzipped when ContentEncoding is gzip (up to MaxInflatedBytes);
//     otherwise the body slice itself. ContentType is not checked.
//   - UUID: MessageId; else the watermill-amqp header _watermill_message_uuid (a string;
//     the header is then not copied to metadata); else a new UUID v4.
//   - Properties: mm.correlation_id, mm.reply_to, mm.expiration, mm.content_type,
//     mm.content_encoding, mm.routing_key, mm.exchange when non-empty; mm.redelivered
//     always ("true"/"false").
//   - __mms fields as mms.<name>, rendered as strings (integers of any width and
//     integral floats in decimal, booleans "true"/"false"). A missing (or void) __mms
//     adds no key.
//   - Every other header under its own name, rendered as a string (tables and arrays as
//     JSON, nil as ""). Headers named mm.* or mms.* are dropped: those keys belong to
//     the Codec.
//
// Errors are *DecodeError: a body in an unknown encoding (ErrContentEncoding), bad gzip,
// a body inflating beyond the limit (ErrBodyTooLarge), an __mms header that is not a
// table (ErrMMSNotTable).
func (c Codec) Unmarshal(d amqp.Delivery) (*message.Message, error) {
	payload, err := DecodeBody(d.Body, d.ContentEncoding, c.MaxInflatedBytes)
	if err != nil {
		return nil, err
	}
	var mms map[string]any
	switch t := d.Headers[HeaderMMS].(type) {
	case amqp.Table:
		mms = t
	case map[string]any:
		mms = t
	case nil:
	default:
		return nil, &DecodeError{What: "header " + HeaderMMS, Err: fmt.Errorf("%w: %T", ErrMMSNotTable, t)}
	}
	id := d.MessageId
	skipUUIDHeader := false
	if id == "" {
		if s, ok := d.Headers[WatermillUUIDHeader].(string); ok && s != "" {
			id, skipUUIDHeader = s, true
		} else {
			id = uuid.NewString()
		}
	}

	// Size the map for exactly the keys it gets. Up to 8 entries (a reply's) fit the
	// small map NewMessage made already; a larger one is made with its size at once.
	n := len(d.Headers) + len(mms) + 1 // + mm.redelivered
	if _, ok := d.Headers[HeaderMMS]; ok {
		n--
	}
	if skipUUIDHeader {
		n--
	}
	for _, v := range [...]string{d.CorrelationId, d.ReplyTo, d.Expiration, d.ContentType, d.ContentEncoding, d.RoutingKey, d.Exchange} {
		if v != "" {
			n++
		}
	}
	msg := message.NewMessage(id, payload)
	md := msg.Metadata
	if n > 8 {
		md = make(message.Metadata, n)
		msg.Metadata = md
	}
	for k, v := range d.Headers {
		if k == HeaderMMS || strings.HasPrefix(k, MetaPrefix) || strings.HasPrefix(k, MetaMMSPrefix) ||
			(skipUUIDHeader && k == WatermillUUIDHeader) {
			continue
		}
		md[k] = renderValue(v)
	}
	for k, v := range mms {
		md[mmsMetaKey(k)] = renderValue(v)
	}
	setIf(md, MetaCorrelationID, d.CorrelationId)
	setIf(md, MetaReplyTo, d.ReplyTo)
	setIf(md, MetaExpiration, d.Expiration)
	setIf(md, MetaContentType, d.ContentType)
	setIf(md, MetaContentEncoding, d.ContentEncoding)
	setIf(md, MetaRoutingKey, d.RoutingKey)
	setIf(md, MetaExchange, d.Exchange)
	if d.Redelivered {
		md[MetaRedelivered] = "true"
	} else {
		md[MetaRedelivered] = "false"
	}

	return msg, nil
}

func setIf(md message.Metadata, k, v string) {
	if v != "" {
		md[k] = v
	}
}
