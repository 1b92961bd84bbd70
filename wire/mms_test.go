package wire_test

import (
	"errors"
	"maps"
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/micromessaging/micromessaging/wire"
)

func ptr[T any](v T) *T { return &v }

func TestMMSMetadataRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		mms  wire.MMS
		md   message.Metadata
	}{
		{"event", wire.MMS{}, message.Metadata{}},
		{"request", wire.MMS{Route: "echo", IAT: gIAT, EAT: gIAT + 300},
			message.Metadata{"mms.route": "echo", "mms.iat": "1764158400000", "mms.eat": "1764158400300"}},
		{"task", wire.MMS{Route: "work", IsTask: true, IAT: gIAT},
			message.Metadata{"mms.route": "work", "mms.isTask": "true", "mms.iat": "1764158400000"}},
		{"reply", wire.MMS{IsEnd: true, Sequence: ptr(int64(0))},
			message.Metadata{"mms.isError": "false", "mms.isEnd": "true", "mms.sequence": "0"}},
		{"chunk", wire.MMS{IsStream: ptr(true), Sequence: ptr(int64(4))},
			message.Metadata{"mms.isError": "false", "mms.isEnd": "false", "mms.isStream": "true", "mms.sequence": "4"}},
		{"stream end", wire.MMS{IsEnd: true, IsStream: ptr(true), Sequence: ptr(int64(5))},
			message.Metadata{"mms.isError": "false", "mms.isEnd": "true", "mms.isStream": "true", "mms.sequence": "5"}},
		{"error", wire.MMS{IsError: true, IsEnd: true},
			message.Metadata{"mms.isError": "true", "mms.isEnd": "true"}},
		{"negative", wire.MMS{IAT: -1, Sequence: ptr(int64(-2))},
			message.Metadata{"mms.iat": "-1", "mms.isError": "false", "mms.isEnd": "false", "mms.sequence": "-2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			md := message.Metadata{}
			c.mms.SetMetadata(md)
			if !maps.Equal(md, c.md) {
				t.Errorf("SetMetadata: %v, want %v", md, c.md)
			}
			got, err := wire.MMSFromMetadata(md)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.mms) {
				t.Errorf("MMSFromMetadata: %+v, want %+v", got, c.mms)
			}
		})
	}
}

func TestMMSFromMetadataLenient(t *testing.T) {
	got, err := wire.MMSFromMetadata(message.Metadata{
		"mms.isTask": "1", "mms.isEnd": "TRUE", "mms.isStream": "f", "mms.other": "ignored", "mms.eat": "",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := wire.MMS{IsTask: true, IsEnd: true, IsStream: ptr(false)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%+v, want %+v", got, want)
	}
}

func TestMMSFromMetadataErrors(t *testing.T) {
	for _, md := range []message.Metadata{
		{"mms.iat": "x"}, {"mms.eat": "1e3"}, {"mms.sequence": "1.0"},
		{"mms.isTask": "yes"}, {"mms.isError": "no"}, {"mms.isEnd": "2"}, {"mms.isStream": "on"},
	} {
		_, err := wire.MMSFromMetadata(md)
		var me *wire.MetadataError
		if !errors.As(err, &me) || !errors.Is(err, wire.ErrInvalidValue) {
			t.Errorf("%v: %v, want *MetadataError wrapping ErrInvalidValue", md, err)
			continue
		}
		for k, v := range md {
			if me.Key != k || me.Value != v {
				t.Errorf("error names %s=%q, want %s=%q", me.Key, me.Value, k, v)
			}
		}
	}
}
