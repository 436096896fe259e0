package okra

// The guest side of the OKRA ABI, version 2 (docs/abi.md): one call into the guest per
// request, with the request in a buffer the host writes directly and the response left
// in guest memory until the next call. A server-streaming call is one call too, during
// which the method sends its messages through okra.abi.send (stream.go).

import (
	"fmt"
	"os"
	"runtime/debug"
	"unsafe"
)

// ABIVersion is the version of the OKRA guest ABI this package speaks.
const ABIVersion = 2

const (
	// responseHeader is the room left before a response's output for the envelope's
	// field key and a length of up to 5 bytes, so the output is never copied.
	responseHeader = 6
	// maxBufferSize bounds okra_buffer; a larger request is refused, not attempted.
	maxBufferSize = 1 << 30
	minBufferSize = 1024
)

var (
	requestBuf  []byte  // the buffer okra_buffer hands out; reused across requests
	responseBuf []byte  // the last response; alive until the next call, then reused
	current     Context // the request being handled (there is only ever one)
	stream      Stream  // the stream of the request being handled, if it streams
)

//go:wasmexport okra_abi_version
func okraABIVersion() int32 { return ABIVersion }

//go:wasmexport okra_buffer
func okraBuffer(size int32) int32 {
	if size < 0 || size > maxBufferSize {
		return 0
	}
	if int(size) > cap(requestBuf) || requestBuf == nil {
		requestBuf = make([]byte, max(int(size), minBufferSize))
	}
	requestBuf = requestBuf[:cap(requestBuf)]
	return int32(uintptr(unsafe.Pointer(unsafe.SliceData(requestBuf))))
}

//go:wasmexport okra_handle
func okraHandle(ptr int32, length int32) int64 {
	out := responseBuf[:0]
	if cap(out) < minBufferSize {
		out = make([]byte, 0, minBufferSize)
	}
	out, err := handle(ptr, length, out[:responseHeader])
	start := 0
	if err != nil {
		out = appendErrorResponse(out[:0], err)
	} else if n := len(out) - responseHeader; n == 0 {
		start = responseHeader // an empty output is an empty envelope
	} else {
		start = responseHeader - 1 - sizeVarint(uint64(n))
		out[start] = 0x0a // Response.output
		appendVarint(out[start+1:start+1], uint64(n))
	}
	responseBuf = out
	p := uintptr(unsafe.Pointer(unsafe.SliceData(out))) + uintptr(start)
	return int64(p)<<32 | int64(len(out)-start)
}

// handle decodes a request envelope, finds the method and runs it; a panic in the
// method fails the call with Internal instead of trapping the instance.
func handle(ptr int32, length int32, out []byte) (_ []byte, err error) {
	in, ok := requestBytes(ptr, length)
	if !ok {
		return out, NewError(Internal, "request envelope is outside the buffer returned by okra_buffer")
	}
	var serviceName, methodName, input []byte
	streaming := false
	current.metadata = current.metadata[:0]
	for len(in) > 0 {
		num, typ, n := consumeTag(in)
		if n < 0 {
			return out, NewError(Internal, wireError("okra.abi.v1.Request", n).Error())
		}
		in = in[n:]
		if typ == wireVarint && num == 5 { // Request.stream
			v, n := consumeVarint(in)
			if n < 0 {
				return out, NewError(Internal, wireError("okra.abi.v1.Request", n).Error())
			}
			streaming = v != 0
			in = in[n:]
			continue
		}
		if typ == wireBytes && num >= 1 && num <= 4 {
			v, n := consumeBytes(in)
			if n < 0 {
				return out, NewError(Internal, wireError("okra.abi.v1.Request", n).Error())
			}
			switch num {
			case 1:
				methodName = v
			case 2:
				input = v
			case 3:
				current.metadata = append(current.metadata, v)
			case 4:
				serviceName = v
			}
			in = in[n:]
			continue
		}
		n = skipField(in, num, typ, 0)
		if n < 0 {
			return out, NewError(Internal, wireError("okra.abi.v1.Request", n).Error())
		}
		in = in[n:]
	}
	s, m, err := lookup(serviceName, methodName)
	if err != nil {
		return out, err
	}
	current.service, current.method = s.name, m.Name
	if streaming != (m.Stream != nil) {
		return out, Errorf(Internal, "%s/%s: the host called a %s method as %s", s.name, m.Name,
			kindOf(m.Stream != nil), kindOf(streaming))
	}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "panic in %s/%s: %v\n%s", s.name, m.Name, r, debug.Stack())
			err = Errorf(Internal, "%s/%s panicked: %v", s.name, m.Name, r)
		}
	}()
	if m.Stream != nil {
		stream.err = nil
		return out, m.Stream(&current, input, &stream)
	}
	return m.Handler(&current, input, out)
}

func kindOf(streaming bool) string {
	if streaming {
		return "server-streaming"
	}
	return "unary"
}

// requestBytes returns the request the host wrote at ptr, which must lie within the
// buffer returned by okra_buffer.
func requestBytes(ptr int32, length int32) ([]byte, bool) {
	if requestBuf == nil || length < 0 {
		return nil, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(requestBuf)))
	p := uintptr(uint32(ptr))
	if p < base || p-base > uintptr(len(requestBuf)) || uintptr(length) > uintptr(len(requestBuf))-(p-base) {
		return nil, false
	}
	off := int(p - base)
	return requestBuf[off : off+int(length)], true
}

func appendErrorResponse(b []byte, err error) []byte {
	code, message := statusOf(err)
	b = append(b, 0x10) // Response.code
	b = appendVarint(b, uint64(code))
	if message != "" {
		b = append(b, 0x1a) // Response.message
		b = appendString(b, message)
	}
	return b
}
