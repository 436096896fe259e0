package okra

import (
	"context"
	"iter"
	"time"
)

// Context is the request being handled: the method called, its metadata and a logger.
//
// It is a context.Context, so it can be passed to code that expects one. It is valid
// only until the method returns; do not keep it.
type Context struct {
	service  string
	method   string
	metadata [][]byte // encoded Metadata entries, aliasing the request buffer
}

var _ context.Context = (*Context)(nil)

// Service returns the fully qualified name of the service called, such as
// "greeter.v1.Greeter".
func (c *Context) Service() string { return c.service }

// Method returns the simple name of the method called, such as "SayHello".
func (c *Context) Method() string { return c.method }

// Metadata returns the first value of the request metadata (headers) under key, or ""
// if there is none. Keys are compared case-insensitively.
func (c *Context) Metadata(key string) string {
	for k, v := range c.AllMetadata() {
		if equalFoldASCII(k, key) {
			return v
		}
	}
	return ""
}

// MetadataValues returns every value of the request metadata under key.
func (c *Context) MetadataValues(key string) []string {
	var values []string
	for k, v := range c.AllMetadata() {
		if equalFoldASCII(k, key) {
			values = append(values, v)
		}
	}
	return values
}

// AllMetadata yields every metadata entry in the order received. The host passes on
// only the headers its transport lets through, with lower-case keys.
func (c *Context) AllMetadata() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for _, entry := range c.metadata {
			key, value := decodeMetadata(entry)
			if !yield(key, value) {
				return
			}
		}
	}
}

// Log returns the service's logger.
func (c *Context) Log() *Logger { return &defaultLogger }

// Deadline implements context.Context; calls have no deadline visible to the guest
// (the host enforces its own).
func (c *Context) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done implements context.Context: the call is never cancelled from inside the guest.
func (c *Context) Done() <-chan struct{} { return nil }

// Err implements context.Context.
func (c *Context) Err() error { return nil }

// Value implements context.Context; a Context carries no values.
func (c *Context) Value(key any) any { return nil }

func decodeMetadata(b []byte) (key, value string) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if typ == wireBytes && (num == 1 || num == 2) {
			v, n := consumeBytes(b)
			if n < 0 {
				return
			}
			if num == 1 {
				key = string(v)
			} else {
				value = string(v)
			}
			b = b[n:]
			continue
		}
		n = skipField(b, num, typ, 0)
		if n < 0 {
			return
		}
		b = b[n:]
	}
	return
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
