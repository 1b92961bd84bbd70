package wire_test

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The AMQP 0-9-1 field-table encoding (RabbitMQ's type tags, as amqp091-go reads them),
// for fuzzing the Codec with header tables built from bytes and for writing seeds. Unlike
// the wire format, the top level is a plain run of entries without a length prefix, so
// that more fuzzer inputs make a table.

var errSyntax = errors.New("table syntax")

const maxTableDepth = 16

// decodeEntries reads name/value entries until b is exhausted.
func decodeEntries(b []byte, depth int) (amqp.Table, error) {
	t := amqp.Table{}
	for len(b) > 0 {
		n := int(b[0])
		if len(b) < 1+n {
			return nil, errSyntax
		}
		key := string(b[1 : 1+n])
		b = b[1+n:]
		v, rest, err := decodeValue(b, depth)
		if err != nil {
			return nil, err
		}
		t[key] = v
		b = rest
	}
	return t, nil
}

func decodeValue(b []byte, depth int) (v any, rest []byte, err error) {
	if len(b) < 1 || depth > maxTableDepth {
		return nil, nil, errSyntax
	}
	typ, b := b[0], b[1:]
	need := func(n int) bool { return len(b) >= n }
	switch typ {
	case 't':
		if !need(1) {
			return nil, nil, errSyntax
		}
		return b[0] != 0, b[1:], nil
	case 'B':
		if !need(1) {
			return nil, nil, errSyntax
		}
		return b[0], b[1:], nil
	case 'b':
		if !need(1) {
			return nil, nil, errSyntax
		}
		return int8(b[0]), b[1:], nil
	case 's':
		if !need(2) {
			return nil, nil, errSyntax
		}
		return int16(binary.BigEndian.Uint16(b)), b[2:], nil
	case 'u':
		if !need(2) {
			return nil, nil, errSyntax
		}
		return binary.BigEndian.Uint16(b), b[2:], nil
	case 'I':
		if !need(4) {
			return nil, nil, errSyntax
		}
		return int32(binary.BigEndian.Uint32(b)), b[4:], nil
	case 'i':
		if !need(4) {
			return nil, nil, errSyntax
		}
		return binary.BigEndian.Uint32(b), b[4:], nil
	case 'l':
		if !need(8) {
			return nil, nil, errSyntax
		}
		return int64(binary.BigEndian.Uint64(b)), b[8:], nil
	case 'f':
		if !need(4) {
			return nil, nil, errSyntax
		}
		return math.Float32frombits(binary.BigEndian.Uint32(b)), b[4:], nil
	case 'd':
		if !need(8) {
			return nil, nil, errSyntax
		}
		return math.Float64frombits(binary.BigEndian.Uint64(b)), b[8:], nil
	case 'D':
		if !need(5) {
			return nil, nil, errSyntax
		}
		return amqp.Decimal{Scale: b[0], Value: int32(binary.BigEndian.Uint32(b[1:]))}, b[5:], nil
	case 'T':
		if !need(8) {
			return nil, nil, errSyntax
		}
		return time.Unix(int64(binary.BigEndian.Uint64(b)), 0), b[8:], nil
	case 'V':
		return nil, b, nil
	case 'S', 'x', 'A', 'F':
		if !need(4) {
			return nil, nil, errSyntax
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, nil, errSyntax
		}
		body, rest := b[:n], b[n:]
		switch typ {
		case 'S':
			return string(body), rest, nil
		case 'x':
			return slices.Clone(body), rest, nil
		case 'F':
			t, err := decodeEntries(body, depth+1)
			return t, rest, err
		}
		var arr []any
		for len(body) > 0 {
			var e any
			if e, body, err = decodeValue(body, depth+1); err != nil {
				return nil, nil, err
			}
			arr = append(arr, e)
		}
		return arr, rest, nil
	}
	return nil, nil, errSyntax
}

// encodeEntries writes t (keys sorted) in the format decodeEntries reads.
func encodeEntries(t amqp.Table) []byte {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b []byte
	for _, k := range keys {
		b = append(b, byte(len(k)))
		b = append(b, k...)
		b = encodeValue(b, t[k])
	}
	return b
}

func encodeValue(b []byte, v any) []byte {
	withLen := func(tag byte, body []byte) []byte {
		b = append(b, tag)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		return append(b, body...)
	}
	switch x := v.(type) {
	case bool:
		if x {
			return append(b, 't', 1)
		}
		return append(b, 't', 0)
	case uint8:
		return append(b, 'B', x)
	case int8:
		return append(b, 'b', byte(x))
	case int16:
		return binary.BigEndian.AppendUint16(append(b, 's'), uint16(x))
	case uint16:
		return binary.BigEndian.AppendUint16(append(b, 'u'), x)
	case int32:
		return binary.BigEndian.AppendUint32(append(b, 'I'), uint32(x))
	case uint32:
		return binary.BigEndian.AppendUint32(append(b, 'i'), x)
	case int64:
		return binary.BigEndian.AppendUint64(append(b, 'l'), uint64(x))
	case float32:
		return binary.BigEndian.AppendUint32(append(b, 'f'), math.Float32bits(x))
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 'd'), math.Float64bits(x))
	case amqp.Decimal:
		return binary.BigEndian.AppendUint32(append(b, 'D', x.Scale), uint32(x.Value))
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, 'T'), uint64(x.Unix()))
	case nil:
		return append(b, 'V')
	case string:
		return withLen('S', []byte(x))
	case []byte:
		return withLen('x', x)
	case amqp.Table:
		return withLen('F', encodeEntries(x))
	case []any:
		var body []byte
		for _, e := range x {
			body = encodeValue(body, e)
		}
		return withLen('A', body)
	}
	panic("encodeValue: unsupported test value")
}

// deliveryOf returns the delivery a consumer gets for p (as the broker passes it on).
func deliveryOf(p amqp.Publishing) amqp.Delivery {
	return amqp.Delivery{
		Headers:         p.Headers,
		ContentType:     p.ContentType,
		ContentEncoding: p.ContentEncoding,
		DeliveryMode:    p.DeliveryMode,
		Priority:        p.Priority,
		CorrelationId:   p.CorrelationId,
		ReplyTo:         p.ReplyTo,
		Expiration:      p.Expiration,
		MessageId:       p.MessageId,
		Timestamp:       p.Timestamp,
		Type:            p.Type,
		UserId:          p.UserId,
		AppId:           p.AppId,
		Body:            p.Body,
	}
}
