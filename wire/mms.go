package wire

import (
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys of the known __mms fields (MetaMMSPrefix + field name).
const (
	MetaMMSRoute    = "mms.route"    // string: the route a request or task is for
	MetaMMSIAT      = "mms.iat"      // int64: issued at, ms since the epoch
	MetaMMSEAT      = "mms.eat"      // int64: expires at, ms since the epoch
	MetaMMSIsTask   = "mms.isTask"   // bool: the message is a task
	MetaMMSIsError  = "mms.isError"  // bool: the reply is an error envelope
	MetaMMSIsEnd    = "mms.isEnd"    // bool: the last reply message
	MetaMMSIsStream = "mms.isStream" // bool: the reply is part of a stream
	MetaMMSSequence = "mms.sequence" // int64: reply sequence number, from 0
)

// MMS is the typed __mms table.
type MMS struct {
	Route                  string
	IAT, EAT               int64 // ms epoch; 0 = absent
	IsTask, IsError, IsEnd bool
	IsStream               *bool  // nil = absent
	Sequence               *int64 // nil = absent
}

// MMSFromMetadata reads the known mms.* keys of md. A missing or empty key leaves its
// field at the zero value (absent). A value that does not parse as its type (decimal
// int64 for iat, eat, sequence; a strconv.ParseBool value for the flags) returns a
// *MetadataError for the first such key in the order of the MMS fields. Unknown mms.*
// keys are ignored.
func MMSFromMetadata(md message.Metadata) (MMS, error) {
	var m MMS
	m.Route = md[MetaMMSRoute]
	var err error
	if m.IAT, err = intMeta(md, MetaMMSIAT); err != nil {
		return MMS{}, err
	}
	if m.EAT, err = intMeta(md, MetaMMSEAT); err != nil {
		return MMS{}, err
	}
	if m.IsTask, _, err = boolMeta(md, MetaMMSIsTask); err != nil {
		return MMS{}, err
	}
	if m.IsError, _, err = boolMeta(md, MetaMMSIsError); err != nil {
		return MMS{}, err
	}
	if m.IsEnd, _, err = boolMeta(md, MetaMMSIsEnd); err != nil {
		return MMS{}, err
	}
	stream, ok, err := boolMeta(md, MetaMMSIsStream)
	if err != nil {
		return MMS{}, err
	}
	if ok {
		m.IsStream = &stream
	}
	if v := md[MetaMMSSequence]; v != "" {
		seq, err := parseMMSInt(MetaMMSSequence, v)
		if err != nil {
			return MMS{}, err
		}
		m.Sequence = &seq
	}
	return m, nil
}

// SetMetadata writes the mms.* keys of the fields of m that are present; it removes no
// key, so build replies on fresh metadata rather than on a request's. Present means:
// Route non-empty; IAT, EAT non-zero; IsTask true; IsStream, Sequence non-nil; IsError
// and IsEnd whenever m is a reply (Sequence or IsStream set, or either flag true), so a
// reply always carries both, as a Node caller requires. Booleans are written "true" or
// "false", integers in decimal.
func (m MMS) SetMetadata(md message.Metadata) {
	if m.Route != "" {
		md[MetaMMSRoute] = m.Route
	}
	if m.IAT != 0 {
		md[MetaMMSIAT] = strconv.FormatInt(m.IAT, 10)
	}
	if m.EAT != 0 {
		md[MetaMMSEAT] = strconv.FormatInt(m.EAT, 10)
	}
	if m.IsTask {
		md[MetaMMSIsTask] = "true"
	}
	if m.Sequence != nil || m.IsStream != nil || m.IsError || m.IsEnd {
		md[MetaMMSIsError] = strconv.FormatBool(m.IsError)
		md[MetaMMSIsEnd] = strconv.FormatBool(m.IsEnd)
	}
	if m.IsStream != nil {
		md[MetaMMSIsStream] = strconv.FormatBool(*m.IsStream)
	}
	if m.Sequence != nil {
		md[MetaMMSSequence] = strconv.FormatInt(*m.Sequence, 10)
	}
}

func intMeta(md message.Metadata, key string) (int64, error) {
	v := md[key]
	if v == "" {
		return 0, nil
	}
	return parseMMSInt(key, v)
}

func boolMeta(md message.Metadata, key string) (value, present bool, err error) {
	v := md[key]
	if v == "" {
		return false, false, nil
	}
	b, err := parseMMSBool(key, v)
	return b, err == nil, err
}

func parseMMSInt(key, v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, &MetadataError{Key: key, Value: v, Err: fmt.Errorf("%w: want an integer: %w", ErrInvalidValue, err)}
	}
	return n, nil
}

func parseMMSBool(key, v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &MetadataError{Key: key, Value: v, Err: fmt.Errorf("%w: want a boolean: %w", ErrInvalidValue, err)}
	}
	return b, nil
}

// mmsWireValue converts the metadata value of the __mms field name to the type it is
// sent as: route string; iat, eat, sequence int64; isTask, isError, isEnd, isStream bool;
// any other field string. key is the full metadata key, for the error.
func mmsWireValue(key, name, v string) (any, error) {
	switch name {
	case "iat", "eat", "sequence":
		n, err := parseMMSInt(key, v)
		if err != nil {
			return nil, err
		}
		return n, nil
	case "isTask", "isError", "isEnd", "isStream":
		b, err := parseMMSBool(key, v)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	return v, nil
}

// mmsMetaKey returns the metadata key of the __mms field name without allocating for
// the known fields.
func mmsMetaKey(name string) string {
	switch name {
	case "route":
		return MetaMMSRoute
	case "iat":
		return MetaMMSIAT
	case "eat":
		return MetaMMSEAT
	case "isTask":
		return MetaMMSIsTask
	case "isError":
		return MetaMMSIsError
	case "isEnd":
		return MetaMMSIsEnd
	case "isStream":
		return MetaMMSIsStream
	case "sequence":
		return MetaMMSSequence
	}
	return MetaMMSPrefix + name
}
