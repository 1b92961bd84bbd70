package wire_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/micromessaging/micromessaging/wire"
)

func TestErrorBody(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"remote error as the Node peer sends it",
			&wire.RemoteError{Message: "failed on purpose", CodeString: "boom", Code: 418, Info: map[string]int{"x": 1},
				Level: "fatal", Stack: "Error: failed on purpose\n    at handler"},
			`{"error":{"message":"failed on purpose","codeString":"boom","code":418,"info":{"x":1},"level":"fatal","stack":"Error: failed on purpose\n    at handler","isCustomError":true}}`},
		{"defaults", &wire.RemoteError{Message: "m", CodeString: "notFound"},
			`{"error":{"message":"m","codeString":"notFound","code":500,"level":"fatal","isCustomError":true}}`},
		{"wrapped remote error keeps its own fields",
			fmt.Errorf("load: %w", &wire.RemoteError{Message: "no such user", CodeString: "notFound", Code: 404, Level: "warning"}),
			`{"error":{"message":"no such user","codeString":"notFound","code":404,"level":"warning","isCustomError":true}}`},
		{"plain error", errors.New("disk <full> & on fire"),
			`{"error":{"message":"disk <full> & on fire","code":500,"level":"fatal","isCustomError":true}}`},
		{"info that JSON cannot encode is left out", &wire.RemoteError{Message: "m", Code: 400, Info: make(chan int)},
			`{"error":{"message":"m","code":400,"level":"fatal","isCustomError":true}}`},
		{"nil", nil, `{"error":{"message":"","code":500,"level":"fatal","isCustomError":true}}`},
		{"typed nil", (*wire.RemoteError)(nil), `{"error":{"message":"","code":500,"level":"fatal","isCustomError":true}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := string(wire.ErrorBody(c.err)); got != c.want {
				t.Errorf("\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestParseErrorBody(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want wire.RemoteError
	}{
		{"node",
			`{"error":{"message":"failed on purpose","codeString":"boom","code":418,"info":{"x":1},"level":"fatal","stack":"Error: x","isCustomError":true}}`,
			wire.RemoteError{Message: "failed on purpose", CodeString: "boom", Code: 418, Info: map[string]any{"x": 1.0}, Level: "fatal", Stack: "Error: x"}},
		{"code as float", `{"error":{"message":"m","code":404.0}}`, wire.RemoteError{Message: "m", Code: 404, Level: "fatal"}},
		{"code truncated", `{"error":{"message":"m","code":-403.9}}`, wire.RemoteError{Message: "m", Code: -403, Level: "fatal"}},
		{"code as string", `{"error":{"message":"m","code":" 409 "}}`, wire.RemoteError{Message: "m", Code: 409, Level: "fatal"}},
		{"code exponent", `{"error":{"code":4.18e2}}`, wire.RemoteError{Code: 418, Level: "fatal"}},
		{"code unusable", `{"error":{"code":"teapot"}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"code too big", `{"error":{"code":1e300}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"code zero", `{"error":{"code":0}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"code bool", `{"error":{"code":true}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"missing fields", `{"error":{}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"null fields", `{"error":{"message":null,"info":null,"level":null}}`, wire.RemoteError{Code: 500, Level: "fatal"}},
		{"non-string fields", `{"error":{"message":{"a":1},"codeString":7,"level":false,"stack":[1]}}`,
			wire.RemoteError{Message: `{"a":1}`, CodeString: "7", Code: 500, Level: "false", Stack: "[1]"}},
		{"error string", `{"error":"boom"}`, wire.RemoteError{Message: "boom", Code: 500, Level: "fatal"}},
		{"error number", `{"error": 42}`, wire.RemoteError{Message: "42", Code: 500, Level: "fatal"}},
		{"error array", `{"error":[1,"a"]}`, wire.RemoteError{Message: `[1,"a"]`, Code: 500, Level: "fatal"}},
		{"bare object", `{"message":"m","code":401}`, wire.RemoteError{Message: "m", Code: 401, Level: "fatal"}},
		{"bare string", `"timeout"`, wire.RemoteError{Message: "timeout", Code: 500, Level: "fatal"}},
		{"info array", `{"error":{"info":[1,"x",null]}}`, wire.RemoteError{Code: 500, Level: "fatal", Info: []any{1.0, "x", nil}}},
		{"info beyond float64", `{"error":{"info":1e400}}`, wire.RemoteError{Code: 500, Level: "fatal", Info: json.RawMessage(`1e400`)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := wire.ParseErrorBody([]byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, c.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, c.want)
			}
		})
	}
	for _, in := range []string{``, `nul`, `{"error":null}`, `{}`, `{"x":1}`, `[1]`, `42`, `{"error":`, "\xff"} {
		got, err := wire.ParseErrorBody([]byte(in))
		var de *wire.DecodeError
		if got != nil || !errors.As(err, &de) || !errors.Is(err, wire.ErrNotErrorEnvelope) {
			t.Errorf("%q: %v, %v; want a *DecodeError wrapping ErrNotErrorEnvelope", in, got, err)
		}
	}
}

func TestErrorBodyRoundTrip(t *testing.T) {
	in := &wire.RemoteError{Message: "m <&>", CodeString: "forbidden", Code: 403,
		Info: map[string]any{"user": "u", "ids": []any{1.0, 2.0}}, Level: "error", Stack: "s"}
	got, err := wire.ParseErrorBody(wire.ErrorBody(in))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("got %#v, want %#v", got, in)
	}
	if want := "remote error: m <&> (forbidden, code 403)"; got.Error() != want {
		t.Errorf("Error() = %q, want %q", got.Error(), want)
	}
	if want := "remote error: x (code 500)"; (&wire.RemoteError{Message: "x", Code: 500}).Error() != want {
		t.Errorf("Error() without codeString: %q", (&wire.RemoteError{Message: "x", Code: 500}).Error())
	}
}
