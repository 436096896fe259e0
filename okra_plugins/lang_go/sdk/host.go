package okra

// The host function calling convention (docs/abi.md, "Host function convention"),
// for bindings of host APIs: a negative result is -code with the message pending, and a
// variable-size result that does not fit the caller's buffer stays pending on the host
// until fetched with okra.abi.take.

import "unsafe"

//go:wasmimport okra.abi take
func abiTake(ptr unsafe.Pointer, capacity int32) int32

// maxPendingMessage bounds how far takeMessage grows its buffer for an error message.
const maxPendingMessage = 1 << 20

// CallHost calls a host function that returns data of variable size. call must pass
// ptr and capacity as the function's last two arguments (out_ptr, out_cap) and return
// its result. The data is returned in out's array when it fits, otherwise in a new
// slice fetched with okra.abi.take; a negative result becomes an *Error.
func CallHost(out []byte, call func(ptr unsafe.Pointer, capacity int32) int32) ([]byte, error) {
	out = out[:cap(out)]
	n := call(unsafe.Pointer(unsafe.SliceData(out)), int32(len(out)))
	if n < 0 {
		return nil, HostError(n)
	}
	if int(n) <= len(out) {
		return out[:n], nil
	}
	big := make([]byte, n)
	m := abiTake(unsafe.Pointer(unsafe.SliceData(big)), n)
	if m < 0 {
		return nil, HostError(m)
	}
	return big[:m], nil
}

// HostError turns a host function's result into an error: nil for a result >= 0,
// otherwise an *Error with the code and the message the host left pending.
func HostError(result int32) error {
	if result >= 0 {
		return nil
	}
	return &Error{Code: Code(-result), Message: takeMessage()}
}

// takeMessage fetches the pending error message, growing its buffer as needed (take
// says only that a buffer is too small, not how large the message is).
func takeMessage() string {
	buf := make([]byte, 256)
	for {
		n := abiTake(unsafe.Pointer(unsafe.SliceData(buf)), int32(len(buf)))
		switch {
		case n >= 0:
			return string(buf[:n])
		case n == -int32(ResourceExhausted) && len(buf) < maxPendingMessage:
			buf = make([]byte, 2*len(buf))
		default:
			return "(the host gave no message)"
		}
	}
}
