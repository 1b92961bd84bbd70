package rpc

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/micromessaging/micromessaging/wire"
)

var (
	// ErrTimeout: no final reply arrived within the call's timeout (the ctx deadline,
	// WithTimeout, or ClientConfig.Timeout; for a stream, the time since the last chunk).
	// Errors that wrap it also match context.DeadlineExceeded.
	ErrTimeout = errors.New("micromessaging: rpc: timeout")

	// ErrUnroutable: no queue is bound for the request (nobody serves the route). The
	// call fails as soon as the broker returns the request, not after the timeout.
	// It is the same value as wire.ErrUnroutable and rabbitmq.ErrUnroutable.
	ErrUnroutable = wire.ErrUnroutable

	// ErrClosed: the Client was closed before or during the call.
	ErrClosed = errors.New("micromessaging: rpc: client closed")

	// ErrExpired: Request.Write was called after the request's deadline and before any
	// chunk went out, so the caller has given up; nothing was sent.
	ErrExpired = errors.New("micromessaging: rpc: request expired")

	// ErrAnswered: Request.Write was called after the final reply was sent.
	ErrAnswered = errors.New("micromessaging: rpc: request already answered")

	// ErrInvalidName: a service or route name is empty, contains white space, or makes a
	// queue name longer than AMQP's 255 bytes.
	ErrInvalidName = errors.New("micromessaging: invalid name")

	// ErrProtocol: a reply that breaks the wire protocol (bad __mms values, an error reply
	// without an error envelope). The error also wraps the *wire.DecodeError or
	// *wire.MetadataError that says what was wrong.
	ErrProtocol = errors.New("micromessaging: rpc: malformed reply")
)

// RemoteError is the error a handler sent back (the wire's error envelope). It is the
// same type as wire.RemoteError, so either name works with errors.As:
//
//	var re *rpc.RemoteError
//	if errors.As(err, &re) { fmt.Println(re.Code, re.CodeString, re.Info) }
//
// A handler that returns a *RemoteError (or an error wrapping one) sends its Message,
// CodeString, Code, Info, Level and Stack as they are; any other error is sent with
// code 500, level "fatal" and its Error() text as the message.
type RemoteError = wire.RemoteError

// maxQueueName is the longest queue name AMQP accepts (a short string).
const maxQueueName = 255

// ValidateName reports whether name can be used as a service or route name: not empty
// and without white space (queue names and routing keys are built from it). kind names
// the thing in the error ("service", "route"). The error wraps ErrInvalidName.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty", ErrInvalidName, kind)
	case strings.ContainsFunc(name, unicode.IsSpace):
		return fmt.Errorf("%w: %s name %q contains white space", ErrInvalidName, kind, name)
	case len(name) > maxQueueName-len("q.requests.."):
		return fmt.Errorf("%w: %s name %q is longer than %d bytes", ErrInvalidName, kind, name, maxQueueName-len("q.requests.."))
	}
	return nil
}

// requestQueue validates service and route and returns the request queue name.
func requestQueue(service, route string) (string, error) {
	if err := errors.Join(ValidateName("service", service), ValidateName("route", route)); err != nil {
		return "", err
	}
	q := wire.RequestQueue(service, route)
	if len(q) > maxQueueName {
		return "", fmt.Errorf("%w: queue name %q is longer than %d bytes", ErrInvalidName, q, maxQueueName)
	}
	return q, nil
}
