package wire

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// maxRenderDepth bounds the nesting rendered from tables and arrays. The amqp091 reader
// bounds what comes from the wire; this guards values built in process (even cyclic ones).
const maxRenderDepth = 64

// renderValue renders an AMQP field value as a metadata string: strings as they are,
// []byte as a string, integers of every width in decimal, integral floats in decimal
// (1.7e12 -> "1700000000000"), other floats in the shortest form that reads back the same,
// booleans as "true"/"false", nil as "", tables and arrays as JSON, decimals as decimal
// numbers and timestamps as RFC 3339 (UTC). It never fails.
func renderValue(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case bool:
		if x {
			return "true"
		}
		return "false"
	case nil:
		return ""
	case int8:
		return strconv.FormatInt(int64(x), 10)
	case int16:
		return strconv.FormatInt(int64(x), 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.FormatInt(int64(x), 10)
	case uint8:
		return strconv.FormatUint(uint64(x), 10)
	case uint16:
		return strconv.FormatUint(uint64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case uint:
		return strconv.FormatUint(uint64(x), 10)
	case float64:
		return string(appendFloat(nil, x, 64, false))
	case float32:
		return string(appendFloat(nil, float64(x), 32, false))
	case amqp.Decimal:
		return string(appendDecimal(nil, x))
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case amqp.Table, map[string]any, []any:
		return string(appendJSON(make([]byte, 0, 64), v, 0))
	}
	return fmt.Sprint(v)
}

// appendFloat appends f: integral values below 1e21 in plain decimal, others in the
// shortest form (exponent for very small or large magnitudes). Non-finite values are
// "NaN", "Infinity", "-Infinity" as text, null in JSON (as JSON.stringify does).
func appendFloat(b []byte, f float64, bits int, inJSON bool) []byte {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		if inJSON {
			return append(b, "null"...)
		}
		if math.IsNaN(f) {
			return append(b, "NaN"...)
		}
		if f > 0 {
			return append(b, "Infinity"...)
		}
		return append(b, "-Infinity"...)
	}
	abs := math.Abs(f)
	if abs == 0 || (abs >= 1e-6 && abs < 1e21) {
		return strconv.AppendFloat(b, f, 'f', -1, bits)
	}
	return strconv.AppendFloat(b, f, 'e', -1, bits)
}

// appendDecimal appends an AMQP decimal (Value / 10^Scale) as a decimal number.
func appendDecimal(b []byte, d amqp.Decimal) []byte {
	v := int64(d.Value)
	if v < 0 {
		b = append(b, '-')
		v = -v
	}
	digits := strconv.FormatInt(v, 10)
	scale := int(d.Scale)
	if scale == 0 {
		return append(b, digits...)
	}
	if len(digits) <= scale {
		b = append(b, '0', '.')
		for range scale - len(digits) {
			b = append(b, '0')
		}
		return append(b, digits...)
	}
	b = append(b, digits[:len(digits)-scale]...)
	b = append(b, '.')
	return append(b, digits[len(digits)-scale:]...)
}

// appendJSON appends v as JSON: tables with sorted keys, []byte as a string, no HTML
// escaping, invalid UTF-8 replaced by U+FFFD, non-finite floats as null.
func appendJSON(b []byte, v any, depth int) []byte {
	if depth > maxRenderDepth {
		return append(b, "null"...)
	}
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return appendJSONString(b, x)
	case []byte:
		return appendJSONString(b, string(x))
	case bool:
		return strconv.AppendBool(b, x)
	case int8:
		return strconv.AppendInt(b, int64(x), 10)
	case int16:
		return strconv.AppendInt(b, int64(x), 10)
	case int32:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint16:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint32:
		return strconv.AppendUint(b, uint64(x), 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case uint:
		return strconv.AppendUint(b, uint64(x), 10)
	case float64:
		return appendFloat(b, x, 64, true)
	case float32:
		return appendFloat(b, float64(x), 32, true)
	case amqp.Decimal:
		return appendDecimal(b, x)
	case time.Time:
		return appendJSONString(b, x.UTC().Format(time.RFC3339Nano))
	case amqp.Table:
		return appendJSONObject(b, x, depth)
	case map[string]any:
		return appendJSONObject(b, x, depth)
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, e, depth+1)
		}
		return append(b, ']')
	}
	return appendJSONString(b, fmt.Sprint(v))
}

func appendJSONObject(b []byte, m map[string]any, depth int) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSON(b, m[k], depth+1)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, as JSON.stringify writes it (no escaping
// of <, > and &), with invalid UTF-8 replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\ufffd"...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
