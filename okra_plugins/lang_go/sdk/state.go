package okra

// Bindings for the okra.state host API: a key-value store that outlives instances,
// scoped to the service (and, for a keyed service, to the key being served). Every
// value has a version that grows with each write, for optimistic concurrency.

import (
	"iter"
	"math"
	"time"
	"unsafe"
)

//go:wasmimport okra.state get
func stateGet(keyPtr unsafe.Pointer, keyLen int32, outPtr unsafe.Pointer, outCap int32) int32

//go:wasmimport okra.state set
func stateSet(keyPtr unsafe.Pointer, keyLen int32, valPtr unsafe.Pointer, valLen int32, ttlMillis int64, versionOut unsafe.Pointer) int32

//go:wasmimport okra.state delete
func stateDelete(keyPtr unsafe.Pointer, keyLen int32) int32

//go:wasmimport okra.state compare_and_set
func stateCompareAndSet(keyPtr unsafe.Pointer, keyLen int32, expected int64, valPtr unsafe.Pointer, valLen int32, ttlMillis int64, versionOut unsafe.Pointer) int32

//go:wasmimport okra.state increment
func stateIncrement(keyPtr unsafe.Pointer, keyLen int32, delta int64, ttlMillis int64, valueOut unsafe.Pointer) int32

//go:wasmimport okra.state list
func stateList(reqPtr unsafe.Pointer, reqLen int32, outPtr unsafe.Pointer, outCap int32) int32

var (
	// ErrVersionMismatch is in the chain of the error CompareAndSet returns when the
	// stored version is not the expected one (code Aborted): test it with errors.Is,
	// then read the value again and retry.
	ErrVersionMismatch = NewError(Aborted, "the stored version is not the expected one")
	// ErrNotAnInteger is in the chain of the error Increment returns when the stored
	// value is not a decimal integer (code FailedPrecondition).
	ErrNotAnInteger = NewError(FailedPrecondition, "the stored value is not a decimal integer")
)

// StateEntry is one stored value with its version.
type StateEntry struct {
	Key     string
	Value   []byte
	Version int64
}

// StateStore is the service's state, from State. Keys are at most 1 KiB and values at
// most 1 MiB unless the service's settings say otherwise; a key or value too large
// fails with InvalidArgument or ResourceExhausted, a write to a read-only store with
// PermissionDenied.
type StateStore struct {
	listBuf []byte // the last ListRequest encoded; reused
}

var state StateStore

// State returns the state of the service: of the key being served for a keyed service,
// of the whole service otherwise. A module that uses it needs
// [host_apis."okra.state"] in okra.toml.
func State() *StateStore { return &state }

// StateOption changes how a value is written: WithTTL.
type StateOption struct {
	ttl time.Duration
}

// WithTTL makes a written value expire after d (rounded up to whole milliseconds), by
// the runtime's clock; a value without a TTL never expires. Every write sets the TTL
// anew: a later write without WithTTL removes it.
func WithTTL(d time.Duration) StateOption { return StateOption{ttl: d} }

func ttlMillis(opts []StateOption) (int64, error) {
	var ttl time.Duration
	for _, o := range opts {
		ttl = o.ttl
	}
	if ttl < 0 {
		return 0, Errorf(InvalidArgument, "a TTL must not be negative (got %v)", ttl)
	}
	return int64(ceilMillis(ttl)), nil
}

// Get returns the value stored under key and its version; found is false if there is
// none (or it has expired).
func (s *StateStore) Get(key string) (entry StateEntry, found bool, err error) {
	data, owned, r := callScratch(func(ptr unsafe.Pointer, capacity int32) int32 {
		return stateGet(stringPtr(key), int32(len(key)), ptr, capacity)
	})
	if r == -int32(NotFound) {
		return StateEntry{}, false, nil // the message stays pending, unread: it says nothing
	}
	if r < 0 {
		return StateEntry{}, false, HostError(r)
	}
	if len(data) < 8 {
		return StateEntry{}, false, Errorf(Internal, "okra.state.get returned %d bytes, fewer than a version", len(data))
	}
	version := int64(le64(data))
	value := data[8:]
	if !owned {
		value = append([]byte(nil), value...)
	}
	return StateEntry{Key: key, Value: value, Version: version}, true, nil
}

// Set stores value under key and returns its new version.
func (s *StateStore) Set(key string, value []byte, opts ...StateOption) (version int64, err error) {
	return s.set(key, bytesPtr(value), len(value), opts)
}

// SetString is Set for a string value, without copying it.
func (s *StateStore) SetString(key string, value string, opts ...StateOption) (version int64, err error) {
	return s.set(key, stringPtr(value), len(value), opts)
}

func (s *StateStore) set(key string, value unsafe.Pointer, length int, opts []StateOption) (int64, error) {
	ttl, err := ttlMillis(opts)
	if err != nil {
		return 0, err
	}
	if r := stateSet(stringPtr(key), int32(len(key)), value, int32(length), ttl, int64OutPtr()); r < 0 {
		return 0, HostError(r)
	}
	return int64Out, nil
}

// Delete removes key; existed says whether there was a value to remove.
func (s *StateStore) Delete(key string) (existed bool, err error) {
	r := stateDelete(stringPtr(key), int32(len(key)))
	if r < 0 {
		return false, HostError(r)
	}
	return r == 1, nil
}

// CompareAndSet stores value under key only if the stored version is expected (0: only
// if there is no value), and returns the new version. If another write came first it
// fails with an error for which errors.Is(err, ErrVersionMismatch) holds (code Aborted;
// its message says the current version).
func (s *StateStore) CompareAndSet(key string, expected int64, value []byte, opts ...StateOption) (version int64, err error) {
	ttl, err := ttlMillis(opts)
	if err != nil {
		return 0, err
	}
	r := stateCompareAndSet(stringPtr(key), int32(len(key)), expected, bytesPtr(value), int32(len(value)), ttl, int64OutPtr())
	if r == -int32(Aborted) {
		return 0, &Error{Code: Aborted, Message: takeMessage(), err: ErrVersionMismatch}
	}
	if r < 0 {
		return 0, HostError(r)
	}
	return int64Out, nil
}

// Increment adds delta to the decimal integer stored under key (a missing key counts
// as 0) and returns the result, atomically. A value that is not a decimal integer fails
// with an error for which errors.Is(err, ErrNotAnInteger) holds (code
// FailedPrecondition). Like every write, it gives the value the TTL of its options,
// none without WithTTL.
func (s *StateStore) Increment(key string, delta int64, opts ...StateOption) (int64, error) {
	ttl, err := ttlMillis(opts)
	if err != nil {
		return 0, err
	}
	r := stateIncrement(stringPtr(key), int32(len(key)), delta, ttl, int64OutPtr())
	if r == -int32(FailedPrecondition) {
		return 0, &Error{Code: FailedPrecondition, Message: takeMessage(), err: ErrNotAnInteger}
	}
	if r < 0 {
		return 0, HostError(r)
	}
	return int64Out, nil
}

// ListOptions select one page of List.
type ListOptions struct {
	// Cursor continues a listing where the page that returned it ended; "" starts.
	Cursor string
	// Limit is the most entries per page: 0 means 100, the host allows up to 1000.
	Limit int
}

// List returns the entries whose keys start with prefix, in key order, one page at a
// time: next is the cursor of the next page, "" after the last one. All walks every
// page.
func (s *StateStore) List(prefix string, opts ListOptions) (entries []StateEntry, next string, err error) {
	if opts.Limit < 0 || opts.Limit > math.MaxUint32 {
		return nil, "", Errorf(InvalidArgument, "ListOptions.Limit %d is out of range", opts.Limit)
	}
	// ListRequest { bytes prefix = 1; bytes cursor = 2; uint32 limit = 3; }
	b := s.listBuf[:0]
	if prefix != "" {
		b = append(b, 0x0a)
		b = appendString(b, prefix)
	}
	if opts.Cursor != "" {
		b = append(b, 0x12)
		b = appendString(b, opts.Cursor)
	}
	if opts.Limit > 0 {
		b = append(b, 0x18)
		b = appendVarint(b, uint64(opts.Limit))
	}
	s.listBuf = b
	data, owned, r := callScratch(func(ptr unsafe.Pointer, capacity int32) int32 {
		return stateList(bytesPtr(b), int32(len(b)), ptr, capacity)
	})
	if r < 0 {
		return nil, "", HostError(r)
	}
	return decodeListResult(ownedCopy(data, owned))
}

// All yields every entry whose key starts with prefix, in key order, fetching one page
// at a time. An error ends the sequence, as the last pair:
//
//	for entry, err := range okra.State().All("user/") {
//		if err != nil {
//			return nil, err
//		}
//		...
//	}
func (s *StateStore) All(prefix string) iter.Seq2[StateEntry, error] {
	return func(yield func(StateEntry, error) bool) {
		cursor := ""
		for {
			entries, next, err := s.List(prefix, ListOptions{Cursor: cursor})
			if err != nil {
				yield(StateEntry{}, err)
				return
			}
			for _, e := range entries {
				if !yield(e, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			cursor = next
		}
	}
}

// decodeListResult decodes a ListResult { repeated StateEntry entries = 1; bytes
// next_cursor = 2; } whose keys, values and cursor alias b, which the caller owns.
func decodeListResult(b []byte) ([]StateEntry, string, error) {
	var entries []StateEntry
	next := ""
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return nil, "", hostDecodeError("okra.state.ListResult", n)
		}
		b = b[n:]
		if typ == wireBytes && (num == 1 || num == 2) {
			v, n := consumeBytes(b)
			if n < 0 {
				return nil, "", hostDecodeError("okra.state.ListResult", n)
			}
			if num == 1 {
				e, err := decodeStateEntry(v)
				if err != nil {
					return nil, "", err
				}
				entries = append(entries, e)
			} else {
				next = aliasString(v)
			}
			b = b[n:]
			continue
		}
		if n = skipField(b, num, typ, 0); n < 0 {
			return nil, "", hostDecodeError("okra.state.ListResult", n)
		}
		b = b[n:]
	}
	return entries, next, nil
}

// decodeStateEntry decodes a StateEntry { bytes key = 1; bytes value = 2; int64
// version = 3; }.
func decodeStateEntry(b []byte) (StateEntry, error) {
	var e StateEntry
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return e, hostDecodeError("okra.state.StateEntry", n)
		}
		b = b[n:]
		switch {
		case typ == wireBytes && (num == 1 || num == 2):
			v, n := consumeBytes(b)
			if n < 0 {
				return e, hostDecodeError("okra.state.StateEntry", n)
			}
			if num == 1 {
				e.Key = aliasString(v)
			} else {
				e.Value = v
			}
			b = b[n:]
		case typ == wireVarint && num == 3:
			v, n := consumeVarint(b)
			if n < 0 {
				return e, hostDecodeError("okra.state.StateEntry", n)
			}
			e.Version = int64(v)
			b = b[n:]
		default:
			if n = skipField(b, num, typ, 0); n < 0 {
				return e, hostDecodeError("okra.state.StateEntry", n)
			}
			b = b[n:]
		}
	}
	return e, nil
}

// hostDecodeError reports a result from the host that does not parse: a host bug.
func hostDecodeError(typeName string, code int) error {
	return NewError(Internal, wireError(typeName, code).Error())
}

func le64(b []byte) uint64 {
	v, _ := consumeFixed64(b)
	return v
}
