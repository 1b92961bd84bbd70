package peerstatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/micromessaging/micromessaging/wire"
)

const (
	// BodyType is the "type" field of a heartbeat sent by this package; Node sends none.
	BodyType = "micromessaging.heartbeat"
	// BodyVersion is the "version" field of a heartbeat sent by this package. Receivers
	// read every known field of any version and ignore unknown ones, so later versions
	// may add fields; Node ignores them all.
	BodyVersion = 1
)

// body is the heartbeat as it travels: Node v3.2.9's PeerStat (the first nine fields,
// in Node's order) followed by this package's extensions, which Node ignores.
type body struct {
	ID          string      `json:"id"`
	Name        string      `json:"name"`
	IsReady     bool        `json:"isReady"`
	IsMaster    bool        `json:"isMaster"`
	ElapsedMs   int64       `json:"elapsedMs"`
	StartedAt   string      `json:"startedAt"`
	LeaderID    string      `json:"leaderId,omitempty"` // omitted while unknown, as Node does
	MemoryUsage MemoryUsage `json:"memoryUsage"`
	KnownPeers  int         `json:"knownPeers"`

	Type       string          `json:"type"`
	Version    int             `json:"version"`
	IntervalMs int64           `json:"intervalMs"`
	Term       uint64          `json:"term,omitempty"`
	Leaving    bool            `json:"leaving,omitempty"`
	Load       json.RawMessage `json:"load,omitempty"`
}

// jsDate formats t like JSON.stringify(new Date(...)).
func jsDate(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// encodeBody renders the heartbeat of p (the own instance) as JSON.
func encodeBody(p Peer) ([]byte, error) {
	b := body{
		ID: p.ID, Name: p.Service, IsReady: p.Ready, IsMaster: p.IsLeader,
		ElapsedMs: p.Uptime.Milliseconds(), StartedAt: jsDate(p.StartedAt),
		LeaderID: p.LeaderID, MemoryUsage: p.Memory, KnownPeers: p.KnownPeers,
		Type: BodyType, Version: BodyVersion, IntervalMs: p.Interval.Milliseconds(),
		Term: p.Term, Leaving: p.Leaving, Load: p.Load,
	}
	return wire.JSON(b)
}

// errNotHeartbeat: the payload is not a JSON object with a non-empty string id.
var errNotHeartbeat = errors.New("peerstatus: not a heartbeat (want a JSON object with a string id)")

// decodeBody reads a heartbeat leniently: only "id" is required; a field of an
// unexpected type is treated as absent, unknown fields are ignored. Strict senders,
// lenient receivers (WIRE.md).
func decodeBody(payload []byte) (Peer, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return Peer{}, fmt.Errorf("%w: %v", errNotHeartbeat, err)
	}
	var p Peer
	if !field(m, "id", &p.ID) || p.ID == "" {
		return Peer{}, errNotHeartbeat
	}
	field(m, "name", &p.Service)
	field(m, "isReady", &p.Ready)
	field(m, "isMaster", &p.IsLeader)
	field(m, "leaderId", &p.LeaderID)
	field(m, "memoryUsage", &p.Memory)
	field(m, "leaving", &p.Leaving)
	var typ string
	field(m, "type", &typ)
	if typ == BodyType {
		if v, ok := number(m, "version"); ok {
			p.Version = int(v)
		}
	}
	if v, ok := number(m, "elapsedMs"); ok && v >= 0 {
		p.Uptime = millis(v, maxUptime)
	}
	if v, ok := number(m, "knownPeers"); ok && v >= 0 {
		p.KnownPeers = int(v)
	}
	p.Interval = NodeInterval
	if v, ok := number(m, "intervalMs"); ok && v >= 1 {
		p.Interval = millis(v, maxInterval)
	}
	var term uint64
	if field(m, "term", &term) {
		p.Term = term
	}
	var started string
	if field(m, "startedAt", &started) {
		if t, err := time.Parse(time.RFC3339Nano, started); err == nil {
			p.StartedAt = t
		}
	}
	if raw, ok := m["load"]; ok && string(raw) != "null" {
		p.Load = append(json.RawMessage(nil), raw...)
	}
	return p, nil
}

// Bounds for durations read from heartbeats (a bogus value must not overflow).
const (
	maxUptime   = 100 * 365 * 24 * time.Hour
	maxInterval = time.Hour
)

// millis converts v milliseconds to a Duration no longer than limit.
func millis(v float64, limit time.Duration) time.Duration {
	if v >= float64(limit/time.Millisecond) {
		return limit
	}
	return time.Duration(v * float64(time.Millisecond))
}

// field decodes m[key] into dst and reports whether it was present and of the right type.
func field(m map[string]json.RawMessage, key string, dst any) bool {
	raw, ok := m[key]
	if !ok || string(raw) == "null" {
		return false
	}
	return json.Unmarshal(raw, dst) == nil
}

// number reads a finite JSON number of any form (Node may send 12 or 12.0).
func number(m map[string]json.RawMessage, key string) (float64, bool) {
	var v float64
	if !field(m, key, &v) || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}
