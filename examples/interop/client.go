package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/micromessaging/micromessaging/patterns/rpc"
	"github.com/micromessaging/micromessaging/router"
	"github.com/micromessaging/micromessaging/wire"
)

// client calls target's contract routes with the Go client and prints one JSON line per
// check. It returns how many checks failed.
func client(url, target string, log watermill.LoggerAdapter) (failed int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc, err := router.New("gointerop-client-"+uuid.NewString()[:8], router.Config{URL: url, Logger: log})
	if err != nil {
		return 0, err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return 0, err
	}
	passed := 0
	check := func(name string, fn func() (ok bool, detail any, err error)) {
		ok, detail, err := fn()
		if err != nil {
			ok, detail = false, "error: "+err.Error()
		}
		if ok {
			passed++
		} else {
			failed++
		}
		line, _ := json.Marshal(map[string]any{"check": name, "ok": ok, "detail": detail})
		fmt.Println(string(line))
	}
	req := func(route string, body any, opts ...rpc.CallOption) (*rpc.Reply, error) {
		return svc.Request(ctx, target, route, body, opts...)
	}

	check("echo", func() (bool, any, error) {
		r, err := req("echo", map[string]any{"a": []any{1, "x"}}, rpc.WithTimeout(5*time.Second))
		if err != nil {
			return false, nil, err
		}
		var b bytes.Buffer
		json.Compact(&b, r.Body)
		return b.String() == `{"a":[1,"x"]}`, string(r.Body), nil
	})
	check("headers", func() (bool, any, error) {
		r, err := req("echo", map[string]any{}, rpc.WithIDRequest("fixed-id"), rpc.WithTimeout(5*time.Second))
		if err != nil {
			return false, nil, err
		}
		return r.IDRequest == "fixed-id", map[string]string{"idRequest": r.IDRequest}, nil
	})
	check("error", func() (bool, any, error) {
		_, err := req("fail", map[string]any{}, rpc.WithTimeout(5*time.Second))
		var re *rpc.RemoteError
		if !errors.As(err, &re) {
			return false, fmt.Sprintf("want a *rpc.RemoteError, got %v", err), nil
		}
		info, _ := re.Info.(map[string]any)
		ok := re.CodeString == "boom" && re.Code == 418 && info["x"] == 1.0 && re.Message != "" &&
			re.Level == "fatal" && !errors.Is(err, rpc.ErrTimeout)
		return ok, map[string]any{"message": re.Message, "codeString": re.CodeString, "code": re.Code, "info": re.Info, "level": re.Level}, nil
	})
	check("stream", func() (bool, any, error) {
		var got []int
		var end *rpc.Reply
		for r, err := range svc.Stream(ctx, target, "stream", map[string]int{"n": 25}, rpc.WithTimeout(5*time.Second)) {
			if err != nil {
				return false, nil, err
			}
			if r.End {
				end = r
				continue
			}
			var c struct{ I *int }
			if json.Unmarshal(r.Body, &c) != nil || c.I == nil {
				return false, fmt.Sprintf("bad chunk %s", r.Body), nil
			}
			got = append(got, *c.I)
		}
		ok := len(got) == 25 && end != nil
		for i, v := range got {
			ok = ok && v == i
		}
		var fin struct{ Done bool }
		if end != nil {
			json.Unmarshal(end.Body, &fin)
		}
		return ok && fin.Done, map[string]any{"chunks": len(got), "order": got, "done": fin.Done}, nil
	})
	check("unroutable", func() (bool, any, error) {
		start := time.Now()
		_, err := req("no-such-route", map[string]any{}, rpc.WithTimeout(3*time.Second))
		ms := time.Since(start).Milliseconds()
		return errors.Is(err, rpc.ErrUnroutable) && ms < 1500, map[string]any{"error": fmt.Sprint(err), "ms": ms}, nil
	})
	check("timeout", func() (bool, any, error) {
		start := time.Now()
		_, err := req("slow", map[string]int{"ms": 1500}, rpc.WithTimeout(300*time.Millisecond))
		ms := time.Since(start).Milliseconds()
		var re *rpc.RemoteError
		return errors.Is(err, rpc.ErrTimeout) && !errors.As(err, &re) && ms < 1200,
			map[string]any{"error": fmt.Sprint(err), "ms": ms}, nil
	})
	check("big-body", func() (bool, any, error) {
		big := strings.Repeat("y", 1_200_000)
		r, err := req("echo", map[string]string{"big": big}, rpc.WithTimeout(10*time.Second))
		if err != nil {
			return false, nil, err
		}
		var b struct{ Big string }
		json.Unmarshal(r.Body, &b)
		enc := r.Header(wire.MetaContentEncoding)
		return b.Big == big && enc == "gzip", map[string]any{"length": len(b.Big), "contentEncoding": enc}, nil
	})
	fmt.Printf("interop client: %d passed, %d failed\n", passed, failed)
	return failed, nil
}
