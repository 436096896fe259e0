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

// Scratch space for the SDK's own host API bindings: a result that is decoded or copied
// as soon as it arrives is written here, so a host call does not allocate a buffer.
var scratch []byte

const (
	minScratch = 4 << 10
	// maxScratch bounds how far scratch grows to fit results seen before, so one large
	// result does not keep its memory for the rest of the instance's life.
	maxScratch = 64 << 10
)

// callScratch calls a host function that returns data of variable size (like CallHost)
// into scratch. The data aliases scratch, valid only until the next host call, unless
// owned is true (a larger result, fetched into a slice of its own). A negative result
// is returned as is, with the error message still pending: the caller decides whether
// it needs the message (HostError) or only the code.
func callScratch(call func(ptr unsafe.Pointer, capacity int32) int32) (data []byte, owned bool, result int32) {
	if scratch == nil {
		scratch = make([]byte, minScratch)
	}
	n := call(unsafe.Pointer(unsafe.SliceData(scratch)), int32(len(scratch)))
	if n < 0 {
		return nil, false, n
	}
	if int(n) <= len(scratch) {
		return scratch[:n], false, n
	}
	big := make([]byte, n)
	m := abiTake(unsafe.Pointer(unsafe.SliceData(big)), n)
	if m < 0 {
		return nil, false, m
	}
	if int(n) <= maxScratch {
		scratch = make([]byte, n) // the next result of this size fits
	}
	return big[:m], true, m
}

// ownedCopy returns data itself if the caller owns it, else a copy.
func ownedCopy(data []byte, owned bool) []byte {
	if owned {
		return data
	}
	return append([]byte(nil), data...)
}

// int64Out is the 8-byte slot host functions write 64-bit results to (little-endian,
// which is also how WebAssembly stores an int64): a global, so passing its address to
// the host allocates nothing.
var int64Out int64

func int64OutPtr() unsafe.Pointer { return unsafe.Pointer(&int64Out) }

func stringPtr(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
