package okra

// Bindings for the okra.call host API: calling a unary method of another service, which
// okra.toml declares as a dependency ([host_apis."okra.call"] services = [...]). The
// generated client of a dependency (such as inventoryv1.NewInventoryClient()) is the
// typed way in; Invoke is what it uses.

import (
	"time"
	"unsafe"
)

//go:wasmimport okra.call invoke
func callInvoke(reqPtr unsafe.Pointer, reqLen int32, outPtr unsafe.Pointer, outCap int32) int32

// CallOption changes one call: WithTimeout, WithMetadata.
type CallOption struct {
	timeout  time.Duration
	key      string
	value    string
	metadata bool
}

// WithTimeout bounds the call to d (rounded up to whole milliseconds). The host never
// waits past the caller's own deadline, which is also the bound without this option.
// A d that is not positive fails the call at once with DeadlineExceeded.
func WithTimeout(d time.Duration) CallOption {
	if d <= 0 {
		d = -1 // remembered as "already expired", since 0 means "not set"
	}
	return CallOption{timeout: d}
}

// WithMetadata adds a metadata entry (a request header) to the call; the callee reads
// it with ctx.Metadata(key). Keys are sent in lower case. The host adds the call chain
// and the trace context (traceparent, tracestate) of the incoming call by itself.
func WithMetadata(key, value string) CallOption {
	return CallOption{key: key, value: value, metadata: true}
}

var callBuf []byte // the last CallRequest encoded; reused

// Invoke calls method (its simple name, such as "Reserve") of service (fully qualified,
// such as "inventory.v1.Inventory") with request, the binary encoding of its request
// message, and returns the binary encoding of the response. ctx is the call being
// handled: the host carries its deadline and call chain to the callee, and a call
// that would come back into a singleton or key busy in the same chain fails at once.
//
// A failed call returns an *Error: the callee's own code and message, PermissionDenied
// if okra.toml does not list the service as a dependency, DeadlineExceeded when the
// timeout passes, Unavailable or Unimplemented when the service is not deployed.
// Returning that error from a method passes the callee's code on to the caller.
func Invoke(ctx *Context, service, method string, request []byte, opts ...CallOption) ([]byte, error) {
	b, err := startCallRequest(service, method, opts)
	if err != nil {
		return nil, err
	}
	if len(request) > 0 {
		b = append(b, 0x1a) // CallRequest.payload
		b = appendBytes(b, request)
	}
	data, owned, err := finishCall(b, opts)
	if err != nil {
		return nil, err
	}
	return ownedCopy(data, owned), nil
}

// InvokeMessage is Invoke for messages: it encodes request, calls service/method and
// decodes the response into response. Generated clients call it.
func InvokeMessage(ctx *Context, service, method string, request, response Message, opts ...CallOption) error {
	b, err := startCallRequest(service, method, opts)
	if err != nil {
		return err
	}
	// The payload is encoded in place, after its key and a length placeholder.
	b = append(b, 0x1a, 0)
	start := len(b)
	if request != nil {
		b, err = request.MarshalAppend(b)
		if err != nil {
			return Errorf(Internal, "the request to %s/%s cannot be encoded: %v", service, method, err)
		}
	}
	if len(b) == start {
		b = b[:start-2] // an empty payload is left out
	} else {
		b = finishDelimited(b, start)
	}
	data, _, err := finishCall(b, opts)
	if err != nil {
		return err
	}
	if err := response.Unmarshal(data); err != nil {
		return Errorf(Internal, "the response of %s/%s cannot be decoded: %v", service, method, err)
	}
	return nil
}

// startCallRequest encodes the head of a CallRequest { string service = 1; string
// method = 2; bytes payload = 3; repeated MetadataEntry metadata = 4; uint64
// timeout_ms = 5; } into callBuf, up to the payload.
func startCallRequest(service, method string, opts []CallOption) ([]byte, error) {
	for i := range opts {
		if opts[i].timeout < 0 {
			return nil, Errorf(DeadlineExceeded, "the timeout of the call to %s/%s has already passed", service, method)
		}
	}
	if !validUTF8String(service) || !validUTF8String(method) {
		return nil, Errorf(InvalidArgument, "service and method names must be valid UTF-8")
	}
	b := callBuf[:0]
	b = append(b, 0x0a)
	b = appendString(b, service)
	b = append(b, 0x12)
	b = appendString(b, method)
	return b, nil
}

// finishCall appends the metadata and timeout to the CallRequest in b and calls the
// host. The response aliases scratch unless owned.
func finishCall(b []byte, opts []CallOption) (data []byte, owned bool, err error) {
	var timeout time.Duration
	for i := range opts {
		o := &opts[i]
		if o.metadata {
			b = append(b, 0x22, 0) // CallRequest.metadata: MetadataEntry { key = 1; value = 2; }
			start := len(b)
			b = append(b, 0x0a)
			b = appendLowerASCII(b, validString(o.key))
			b = append(b, 0x12)
			b = appendString(b, validString(o.value))
			b = finishDelimited(b, start)
		} else if o.timeout != 0 {
			timeout = o.timeout
		}
	}
	if ms := ceilMillis(timeout); ms > 0 {
		b = append(b, 0x28) // CallRequest.timeout_ms
		b = appendVarint(b, ms)
	}
	callBuf = b
	data, owned, r := callScratch(func(ptr unsafe.Pointer, capacity int32) int32 {
		return callInvoke(bytesPtr(b), int32(len(b)), ptr, capacity)
	})
	if r < 0 {
		return nil, false, HostError(r)
	}
	return data, owned, nil
}

// appendLowerASCII appends s, length-prefixed, with ASCII letters in lower case.
func appendLowerASCII(b []byte, s string) []byte {
	b = appendVarint(b, uint64(len(s)))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}
