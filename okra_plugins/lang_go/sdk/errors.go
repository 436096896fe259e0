package okra

import (
	"errors"
	"fmt"
	"strconv"
)

// Code is a status code: the gRPC codes, which the host maps onto Connect codes.
type Code uint32

const (
	OK                 Code = 0
	Canceled           Code = 1
	Unknown            Code = 2
	InvalidArgument    Code = 3
	DeadlineExceeded   Code = 4
	NotFound           Code = 5
	AlreadyExists      Code = 6
	PermissionDenied   Code = 7
	ResourceExhausted  Code = 8
	FailedPrecondition Code = 9
	Aborted            Code = 10
	OutOfRange         Code = 11
	Unimplemented      Code = 12
	Internal           Code = 13
	Unavailable        Code = 14
	DataLoss           Code = 15
	Unauthenticated    Code = 16
)

var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// String returns the code's canonical name, such as "INVALID_ARGUMENT".
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "CODE(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is an error with a status code. A method that returns one fails the call with
// that code and message; any other error fails it with Unknown.
type Error struct {
	Code    Code
	Message string
	err     error // wrapped by Errorf's %w, for errors.Is and errors.As
}

// NewError returns an error with a status code and a fixed message.
func NewError(code Code, message string) *Error {
	return &Error{Code: code, Message: message}
}

// Errorf returns an error with a status code and a formatted message. Like fmt.Errorf,
// a %w verb wraps an error, which errors.Is and errors.As then find.
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), err: errors.Unwrap(err)}
}

func (e *Error) Error() string { return e.Code.String() + ": " + e.Message }

func (e *Error) Unwrap() error { return e.err }

// CodeOf returns the status code a method returning err fails with: OK for nil, the
// code of the first *Error in err's chain, otherwise Unknown.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Unknown
}

// statusOf splits an error returned by a method into the code and message the caller
// receives.
func statusOf(err error) (Code, string) {
	var e *Error
	if errors.As(err, &e) {
		if e.Code == OK {
			// An error that says OK is a contradiction; report it rather than succeed.
			return Unknown, e.Message
		}
		return e.Code, e.Message
	}
	return Unknown, err.Error()
}
