package okra

// Server streaming (ABI v2): a streaming method sends each response with okra.abi.send
// while it runs; the host hands it to the client at once. Send blocks while the client
// is slower than the method (backpressure) and fails once the client has gone.

import "unsafe"

//go:wasmimport okra.abi send
func abiSend(ptr unsafe.Pointer, length int32) int32

// Stream sends the responses of one server-streaming call. Generated code wraps it in
// a type per method (such as GreeterGreetManyStream) whose Send takes the method's
// response type; implementations use that.
type Stream struct {
	buf []byte // the last message encoded; reused, since the host copies it
	err error  // the failure of an earlier Send: every later one returns it
}

// Send encodes m and sends it to the client. It may block until the client has read
// earlier messages. It returns an error when the message cannot be sent: with code
// Canceled when the client has gone, DeadlineExceeded when the call's deadline has
// passed, Internal when m is not a valid response. The method should then stop and
// return (what it returns is no longer delivered to anyone); every later Send returns
// the same error.
func (s *Stream) Send(m Message) error {
	if s.err != nil {
		return s.err
	}
	b, err := m.MarshalAppend(s.buf[:0])
	if err != nil {
		return Errorf(Internal, "a streamed response cannot be encoded: %v", err)
	}
	s.buf = b
	if r := abiSend(unsafe.Pointer(unsafe.SliceData(b)), int32(len(b))); r < 0 {
		s.err = HostError(r)
		return s.err
	}
	return nil
}

// Err returns the error of the Send that failed, or nil while the stream is open.
func (s *Stream) Err() error { return s.err }
