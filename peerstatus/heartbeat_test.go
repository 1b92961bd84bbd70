package peerstatus

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDecodeNodeHeartbeat(t *testing.T) {
	// A heartbeat as the Node library v3.2.9 sends it.
	node := `{"id":"6f1c0f0e-7a44-4d43-9d6b-8f5f2c1a9b10","name":"billing","isReady":true,"isMaster":true,
		"elapsedMs":12345,"startedAt":"2026-11-26T10:00:00.123Z","leaderId":"6f1c0f0e-7a44-4d43-9d6b-8f5f2c1a9b10",
		"memoryUsage":{"rss":50000000,"heapTotal":20000000,"heapUsed":10000000,"external":1000,"arrayBuffers":10},
		"knownPeers":3}`
	p, err := decodeBody([]byte(node))
	if err != nil {
		t.Fatal(err)
	}
	want := Peer{
		ID: "6f1c0f0e-7a44-4d43-9d6b-8f5f2c1a9b10", Service: "billing", Ready: true, IsLeader: true,
		LeaderID: "6f1c0f0e-7a44-4d43-9d6b-8f5f2c1a9b10", Uptime: 12345 * time.Millisecond,
		StartedAt:  time.Date(2026, 11, 26, 10, 0, 0, 123e6, time.UTC),
		Memory:     MemoryUsage{RSS: 50000000, HeapTotal: 20000000, HeapUsed: 10000000, External: 1000, ArrayBuffers: 10},
		KnownPeers: 3, Interval: NodeInterval,
	}
	if !p.StartedAt.Equal(want.StartedAt) {
		t.Errorf("StartedAt = %v, want %v", p.StartedAt, want.StartedAt)
	}
	p.StartedAt = want.StartedAt
	if p.Load != nil || p.Version != 0 || p.Term != 0 {
		t.Errorf("Node body gave Go extensions: %+v", p)
	}
	p.Load = nil
	if p.ID != want.ID || p.Service != want.Service || p.Ready != want.Ready || p.IsLeader != want.IsLeader ||
		p.LeaderID != want.LeaderID || p.Uptime != want.Uptime || p.Memory != want.Memory ||
		p.KnownPeers != want.KnownPeers || p.Interval != want.Interval {
		t.Errorf("decoded\n%+v\nwant\n%+v", p, want)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	started := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)
	in := Peer{
		ID: "a", Service: "svc", Ready: true, IsLeader: true, LeaderID: "a", Term: 1764160000123,
		StartedAt: started, Uptime: 1500 * time.Millisecond, Interval: 250 * time.Millisecond,
		KnownPeers: 2, Memory: MemoryUsage{RSS: 1, HeapTotal: 2, HeapUsed: 3},
		Load: json.RawMessage(`{"limit":10,"tag":"<&>"}`),
	}
	raw, err := encodeBody(in)
	if err != nil {
		t.Fatal(err)
	}
	// Node's fields come first, in Node's order, and the HTML characters stay as they are
	// (JSON.stringify does not escape them).
	s := string(raw)
	if !strings.HasPrefix(s, `{"id":"a","name":"svc","isReady":true,"isMaster":true,"elapsedMs":1500,"startedAt":"2026-01-02T03:04:05.678Z","leaderId":"a","memoryUsage":{"rss":1,"heapTotal":2,"heapUsed":3,"external":0,"arrayBuffers":0},"knownPeers":2,`) {
		t.Errorf("body = %s", s)
	}
	if !strings.Contains(s, `"load":{"limit":10,"tag":"<&>"}`) || !strings.Contains(s, `"type":"`+BodyType+`","version":1`) {
		t.Errorf("body = %s", s)
	}
	out, err := decodeBody(raw)
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.Service != in.Service || !out.Ready || !out.IsLeader || out.LeaderID != "a" ||
		out.Term != in.Term || !out.StartedAt.Equal(started) || out.Uptime != in.Uptime ||
		out.Interval != in.Interval || out.KnownPeers != 2 || out.Memory != in.Memory ||
		string(out.Load) != string(in.Load) || out.Version != BodyVersion || out.Leaving {
		t.Errorf("round trip\n%+v\n%+v", in, out)
	}
}

func TestEncodeOmitsUnknownLeader(t *testing.T) {
	raw, err := encodeBody(Peer{ID: "a", Service: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "leaderId") || strings.Contains(string(raw), "term") || strings.Contains(string(raw), "leaving") {
		t.Errorf("body = %s", raw)
	}
}

func TestDecodeLenient(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		ok         bool
		check      func(Peer) bool
	}{
		{"no id", `{"name":"x"}`, false, nil},
		{"empty id", `{"id":""}`, false, nil},
		{"id not string", `{"id":5}`, false, nil},
		{"not json", `nope`, false, nil},
		{"empty body", `""`, false, nil},
		{"array", `[1]`, false, nil},
		{"only id", `{"id":"x"}`, true, func(p Peer) bool { return p.Interval == NodeInterval && !p.Ready }},
		{"wrong types ignored", `{"id":"x","isReady":"yes","knownPeers":"3","elapsedMs":-5,"startedAt":7,"memoryUsage":[]}`, true,
			func(p Peer) bool { return !p.Ready && p.KnownPeers == 0 && p.Uptime == 0 && p.StartedAt.IsZero() }},
		{"float numbers", `{"id":"x","knownPeers":2.0,"elapsedMs":10.5,"intervalMs":500}`, true,
			func(p Peer) bool {
				return p.KnownPeers == 2 && p.Uptime == 10500*time.Microsecond && p.Interval == 500*time.Millisecond
			}},
		{"unknown fields and later version", `{"id":"x","type":"` + BodyType + `","version":7,"shiny":{"a":1},"term":9}`, true,
			func(p Peer) bool { return p.Version == 7 && p.Term == 9 }},
		{"null load", `{"id":"x","load":null}`, true, func(p Peer) bool { return p.Load == nil }},
		{"leaving", `{"id":"x","leaving":true}`, true, func(p Peer) bool { return p.Leaving }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodeBody([]byte(tc.body))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.check != nil && !tc.check(p) {
				t.Errorf("decoded %+v", p)
			}
		})
	}
}

func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte(`{"id":"x","isMaster":true,"knownPeers":2,"intervalMs":1000,"term":3}`))
	f.Add([]byte(`{"id":"x","elapsedMs":1e308,"intervalMs":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeBody(b)
		if err == nil && (p.ID == "" || p.Interval <= 0 || p.Interval > maxInterval || p.Uptime < 0) {
			t.Errorf("decoded %+v", p)
		}
	})
}
