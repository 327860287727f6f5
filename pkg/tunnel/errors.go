package tunnel

import (
	"errors"
	"fmt"
)

// Kind classifies why a dial failed; frontends map it to an HTTP status.
type Kind int

const (
	// KindFailed: the target could not be dialed (refused, unreachable).
	KindFailed Kind = iota
	// KindNoRoute: no agent serves the host and direct dial is not allowed.
	KindNoRoute
	// KindForbidden: policy refuses the destination (port not forwarded).
	KindForbidden
	// KindUnavailable: the agent is gone or the tunnel is shutting down.
	KindUnavailable
	// KindTimeout: no answer within the dial timeout.
	KindTimeout
	// KindBadRequest: the request itself is malformed.
	KindBadRequest
)

// DialError is a failed dial with a message meant for the end user: it reaches
// kubectl word for word through DIAL_RSP, so it says what went wrong and,
// where there is one, what to do.
type DialError struct {
	Kind Kind
	Msg  string
}

func (e *DialError) Error() string { return e.Msg }

// Errorf builds a DialError of the given kind.
func Errorf(kind Kind, format string, args ...any) error {
	return &DialError{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the kind of err, KindFailed for errors that are not DialErrors.
func KindOf(err error) Kind {
	var de *DialError
	if errors.As(err, &de) {
		return de.Kind
	}
	return KindFailed
}
