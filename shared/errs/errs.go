// Package errs classifies failures once for every service.
//
// Three classes drive delivery: Permanent (bad data, constraint violation,
// schema mismatch: retrying cannot help, the change goes to the dead-letter
// subject), Unavailable (the dependency is down or unreachable: wait with
// backoff for as long as it takes, without spending the delivery budget), and
// everything else, which is transient and retried a bounded number of times.
package errs

import (
	"errors"
	"fmt"
)

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// Permanentf is Permanent(fmt.Errorf(format, args...)).
func Permanentf(format string, args ...any) error {
	return Permanent(fmt.Errorf(format, args...))
}

// Unavailable marks err as an outage of a dependency. Unavailable(nil) is nil.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return &unavailableError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// IsUnavailable reports whether err, or any error it wraps, was marked Unavailable.
func IsUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u)
}
