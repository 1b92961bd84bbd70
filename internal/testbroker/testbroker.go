// Package testbroker gives tests the address of the RabbitMQ they run against and names
// that do not collide with other tests using the same broker at the same time.
//
// Tests that need the broker call URL first. Under `go test -short` the test is skipped;
// otherwise an unreachable broker fails the test with a message that says how to start
// one, so a full run never passes by skipping broker tests silently.
package testbroker

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker used when RABBIT_URI is not set.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// URLFromEnv returns $RABBIT_URI, or DefaultURL when it is unset.
func URLFromEnv() string {
	if u := os.Getenv("RABBIT_URI"); u != "" {
		return u
	}
	return DefaultURL
}

var (
	probeOnce sync.Once
	probeErr  error
)

// URL returns the broker URL for a test that needs RabbitMQ. It skips the test under
// -short and fails it (with instructions) when the broker does not accept a connection.
func URL(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs RabbitMQ; skipped under -short")
	}
	url := URLFromEnv()
	probeOnce.Do(func() {
		var conn *amqp.Connection
		conn, probeErr = amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if probeErr == nil {
			probeErr = conn.Close()
		}
	})
	if probeErr != nil {
		tb.Fatalf("RabbitMQ is not reachable at %s: %v\n"+
			"start one with `make broker` (scripts/rabbitmq.sh), or set RABBIT_URI, "+
			"or run `go test -short` to skip broker tests", redact(url), probeErr)
	}
	return url
}

// Name returns prefix + "." + a short random suffix: a queue, route or service name
// that no other test run on the same broker uses.
func Name(prefix string) string {
	return prefix + "." + strings.ReplaceAll(uuid.NewString()[:13], "-", "")
}

// redact hides the password of an AMQP URL.
func redact(url string) string {
	at := strings.LastIndex(url, "@")
	scheme := strings.Index(url, "://")
	if at < 0 || scheme < 0 {
		return url
	}
	cred := url[scheme+3 : at]
	if i := strings.Index(cred, ":"); i >= 0 {
		cred = cred[:i] + ":***"
	}
	return url[:scheme+3] + cred + url[at:]
}
