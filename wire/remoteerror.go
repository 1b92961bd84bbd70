package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
)

// Defaults of the error envelope, as the Node library applies them.
const (
	DefaultErrorCode  = 500
	DefaultErrorLevel = "fatal"
)

// RemoteError is an error that crosses the wire in the error envelope
// {"error": {"message", "codeString", "code", "info", "level", "stack", "isCustomError": true}}
// of a reply with __mms.isError true.
type RemoteError struct {
	Message    string
	CodeString string // short camelCase code: "timeout", "notFound", "forbidden", ...
	Code       int    // numeric code, HTTP-like; 500 when the peer sent none
	Info       any    // any JSON value: map[string]any, []any, float64, string, bool
	Level      string // "fatal" when the peer sent none
	Stack      string
}

// Error returns "remote error: <message> (<codeString>, code <code>)".
func (e *RemoteError) Error() string {
	if e == nil {
		return "remote error: <nil>"
	}
	var b strings.Builder
	b.WriteString("remote error: ")
	b.WriteString(e.Message)
	b.WriteString(" (")
	if e.CodeString != "" {
		b.WriteString(e.CodeString)
		b.WriteString(", ")
	}
	b.WriteString("code ")
	b.WriteString(strconv.Itoa(e.Code))
	b.WriteString(")")
	return b.String()
}

// envelope is the JSON shape of the error body, fields in the order Node writes them.
type envelope struct {
	Error envelopeError `json:"error"`
}

type envelopeError struct {
	Message       string `json:"message"`
	CodeString    string `json:"codeString,omitempty"`
	Code          int    `json:"code"`
	Info          any    `json:"info,omitempty"`
	Level         string `json:"level"`
	Stack         string `json:"stack,omitempty"`
	IsCustomError bool   `json:"isCustomError"`
}

// ErrorBody returns the error envelope for err:
// {"error":{"message","codeString","code","info","level","stack","isCustomError":true}}.
// A *RemoteError found with errors.As is sent with its own fields (and its own Message,
// without the text of errors wrapping it; a nil *RemoteError gives an empty message); any other error is sent with
// message err.Error(). code 0 is sent as 500 and level "" as "fatal"; codeString, info
// and stack are left out when empty (as JSON.stringify leaves out undefined). An Info
// that cannot be encoded as JSON is left out. A nil err gives an empty message.
func ErrorBody(err error) []byte {
	var e envelopeError
	var re *RemoteError
	isRemote := errors.As(err, &re)
	switch {
	case isRemote && re != nil:
		e = envelopeError{Message: re.Message, CodeString: re.CodeString, Code: re.Code,
			Info: re.Info, Level: re.Level, Stack: re.Stack}
	case err != nil && !isRemote: // a typed nil *RemoteError gives an empty message
		e.Message = err.Error()
	}
	if e.Code == 0 {
		e.Code = DefaultErrorCode
	}
	if e.Level == "" {
		e.Level = DefaultErrorLevel
	}
	e.IsCustomError = true
	b, jerr := JSON(envelope{Error: e})
	if jerr != nil {
		e.Info = nil
		b, _ = JSON(envelope{Error: e}) // only strings and an int left: cannot fail
	}
	return b
}

// ParseErrorBody reads an error envelope leniently: code may be a float (truncated) or a
// numeric string, and is 500 when missing, zero or unusable; level defaults to "fatal";
// message, codeString, level and stack that are not strings hold their JSON text; info is
// decoded into map[string]any, []any, float64, string, bool or nil (json.RawMessage when
// it does not fit those, e.g. a number beyond float64). Also accepted: "error" holding a
// string or another non-object JSON value (the message), a bare error object with a
// "message" field, and a bare JSON string. Anything else (invalid JSON, no "error",
// "error": null) returns a *DecodeError.
func ParseErrorBody(payload []byte) (*RemoteError, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(payload, &top); err != nil {
		var s string
		if json.Unmarshal(payload, &s) == nil {
			return &RemoteError{Message: s, Code: DefaultErrorCode, Level: DefaultErrorLevel}, nil
		}
		return nil, &DecodeError{What: "error envelope", Err: errors.Join(ErrNotErrorEnvelope, err)}
	}
	raw, ok := top["error"]
	if !ok {
		if _, hasMessage := top["message"]; !hasMessage {
			return nil, &DecodeError{What: "error envelope", Err: errors.Join(ErrNotErrorEnvelope, errors.New(`no "error" field`))}
		}
		return errorFromObject(top), nil
	}
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil, &DecodeError{What: "error envelope", Err: errors.Join(ErrNotErrorEnvelope, errors.New(`"error" is null`))}
	case raw[0] == '{':
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil { // cannot happen: raw is valid JSON
			return nil, &DecodeError{What: "error envelope", Err: err}
		}
		return errorFromObject(obj), nil
	}
	return &RemoteError{Message: jsonText(raw), Code: DefaultErrorCode, Level: DefaultErrorLevel}, nil
}

func errorFromObject(obj map[string]json.RawMessage) *RemoteError {
	e := &RemoteError{
		Message:    jsonText(obj["message"]),
		CodeString: jsonText(obj["codeString"]),
		Code:       jsonCode(obj["code"]),
		Level:      jsonText(obj["level"]),
		Stack:      jsonText(obj["stack"]),
	}
	if e.Level == "" {
		e.Level = DefaultErrorLevel
	}
	if raw := bytes.TrimSpace(obj["info"]); len(raw) > 0 && string(raw) != "null" {
		var info any
		if err := json.Unmarshal(raw, &info); err != nil {
			info = json.RawMessage(bytes.Clone(raw))
		}
		e.Info = info
	}
	return e
}

// jsonText returns a JSON string's value, "" for a missing value or null, and the JSON
// text of anything else.
func jsonText(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(raw)
}

// maxExactInt is the largest integer a float64 holds exactly (2^53).
const maxExactInt = 1 << 53

// jsonCode reads the code: a number (truncated towards zero) or a string holding one;
// DefaultErrorCode when missing, zero, out of range or not a number.
func jsonCode(raw json.RawMessage) int {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return DefaultErrorCode
	}
	text := string(raw)
	if raw[0] == '"' {
		if json.Unmarshal(raw, &text) != nil {
			return DefaultErrorCode
		}
		text = strings.TrimSpace(text)
	}
	if n, err := strconv.Atoi(text); err == nil && n != 0 {
		return n
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsNaN(f) || math.Abs(f) > maxExactInt {
		return DefaultErrorCode
	}
	if n := int(f); n != 0 {
		return n
	}
	return DefaultErrorCode
}
