package okra

// Bindings for the okra.time host API: the host's clocks, which a test (or an operator)
// can substitute, unlike the WASI clocks behind the time package's Now.

import (
	"time"
	"unsafe"
)

//go:wasmimport okra.time now
func timeNow(out unsafe.Pointer) int32

//go:wasmimport okra.time monotonic
func timeMonotonic(out unsafe.Pointer) int32

// Now returns the host's wall-clock time. Use it instead of time.Now wherever the time
// matters to the service's behaviour (expiry, timestamps stored or returned), so a test
// running the service on a fake clock controls it. A module that uses it needs
// [host_apis."okra.time"] in okra.toml.
func Now() time.Time {
	timeNow(int64OutPtr()) // cannot fail
	return time.Unix(0, int64Out)
}

// Monotonic returns the host's monotonic clock: a duration since an arbitrary start
// that never decreases, for measuring elapsed time (Monotonic() - start).
func Monotonic() time.Duration {
	timeMonotonic(int64OutPtr()) // cannot fail
	return time.Duration(int64Out)
}

// ceilMillis converts a positive duration to whole milliseconds, rounding up so that a
// short timeout or TTL never becomes 0 (which the host APIs read as "none").
func ceilMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}
