package okra

// Protocol Buffers wire format: the encoding and decoding helpers used by the request
// envelope in this package and by every generated package (okra build copies this file
// into each one, so generated code depends on nothing but the standard library).
//
// Decoders are bounds-checked: malformed input yields an error, never a panic. They
// return the number of bytes consumed, or a negative errCode.

import (
	"errors"
	"math"
	"math/bits"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

const (
	wireVarint     = 0
	wireFixed64    = 1
	wireBytes      = 2
	wireStartGroup = 3
	wireEndGroup   = 4
	wireFixed32    = 5

	// maxDepth bounds message nesting (and group nesting in unknown fields), as the
	// reference implementations do, so hostile input cannot exhaust the stack.
	maxDepth = 100
)

const (
	errCodeTruncated   = -1
	errCodeFieldNumber = -2
	errCodeOverflow    = -3
	errCodeWireType    = -4
	errCodeEndGroup    = -5
	errCodeDepth       = -6
)

// wireError describes a decoding failure of message typeName.
func wireError(typeName string, code int) error {
	var reason string
	switch code {
	case errCodeTruncated:
		reason = "unexpected end of input"
	case errCodeFieldNumber:
		reason = "invalid field number"
	case errCodeOverflow:
		reason = "variable-length integer overflow"
	case errCodeWireType:
		reason = "invalid wire type"
	case errCodeEndGroup:
		reason = "mismatched end group"
	case errCodeDepth:
		reason = "message nested too deeply"
	default:
		reason = "malformed input"
	}
	return errors.New("cannot parse " + typeName + ": " + reason)
}

// utf8Error reports a string field that is not valid UTF-8, which proto3 forbids.
func utf8Error(fieldName string) error {
	return errors.New("string field " + fieldName + " contains invalid UTF-8")
}

// validUTF8 checks ASCII inline (short, mostly ASCII strings are the common case, and a
// call costs more than the loop in Go's WebAssembly code) and leaves the rest to utf8.
func validUTF8(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] >= utf8.RuneSelf {
			return utf8.Valid(b[i:])
		}
	}
	return true
}

func validUTF8String(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return utf8.ValidString(s[i:])
		}
	}
	return true
}

// consumeVarint decodes a varint of at most 10 bytes; bits beyond 64 are dropped, as
// the reference implementations do.
func consumeVarint(b []byte) (uint64, int) {
	if len(b) > 0 && b[0] < 0x80 {
		return uint64(b[0]), 1
	}
	if len(b) > 1 && b[1] < 0x80 {
		return uint64(b[0]&0x7f) | uint64(b[1])<<7, 2
	}
	var v uint64
	for i := 0; i < 10; i++ {
		if i >= len(b) {
			return 0, errCodeTruncated
		}
		c := b[i]
		v |= uint64(c&0x7f) << (7 * uint(i))
		if c < 0x80 {
			return v, i + 1
		}
	}
	return 0, errCodeOverflow
}

// consumeTag decodes a field key into its field number and wire type.
func consumeTag(b []byte) (int32, int, int) {
	v, n := consumeVarint(b)
	if n < 0 {
		return 0, 0, n
	}
	if v>>3 == 0 || v > math.MaxUint32 {
		return 0, 0, errCodeFieldNumber
	}
	return int32(v >> 3), int(v & 7), n
}

// consumeBytes decodes a length-delimited value; the result aliases b.
func consumeBytes(b []byte) ([]byte, int) {
	m, n := consumeVarint(b)
	if n < 0 {
		return nil, n
	}
	if m > uint64(len(b)-n) {
		return nil, errCodeTruncated
	}
	end := n + int(m)
	return b[n:end:end], end
}

func consumeFixed32(b []byte) (uint32, int) {
	if len(b) < 4 {
		return 0, errCodeTruncated
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24, 4
}

func consumeFixed64(b []byte) (uint64, int) {
	if len(b) < 8 {
		return 0, errCodeTruncated
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, 8
}

// skipField skips the value of a field the decoder does not know (or whose wire type
// does not match its declaration, which protobuf also treats as unknown).
func skipField(b []byte, num int32, typ int, depth int) int {
	switch typ {
	case wireVarint:
		_, n := consumeVarint(b)
		return n
	case wireFixed64:
		if len(b) < 8 {
			return errCodeTruncated
		}
		return 8
	case wireBytes:
		_, n := consumeBytes(b)
		return n
	case wireFixed32:
		if len(b) < 4 {
			return errCodeTruncated
		}
		return 4
	case wireStartGroup:
		if depth >= maxDepth {
			return errCodeDepth
		}
		for i := 0; ; {
			if i >= len(b) {
				return errCodeTruncated
			}
			n2, t2, n := consumeTag(b[i:])
			if n < 0 {
				return n
			}
			i += n
			if t2 == wireEndGroup {
				if n2 != num {
					return errCodeEndGroup
				}
				return i
			}
			n = skipField(b[i:], n2, t2, depth+1)
			if n < 0 {
				return n
			}
			i += n
		}
	case wireEndGroup:
		return errCodeEndGroup
	}
	return errCodeWireType
}

// countVarints counts the varints in a packed field, to size a slice once.
func countVarints(b []byte) int {
	n := 0
	for _, c := range b {
		if c < 0x80 {
			n++
		}
	}
	return n
}

func decodeZigZag32(v uint64) int32 {
	x := uint32(v)
	return int32(x>>1) ^ -int32(x&1)
}

func decodeZigZag64(v uint64) int64 {
	return int64(v>>1) ^ -int64(v&1)
}

func encodeZigZag32(v int32) uint64 { return uint64(uint32(v<<1) ^ uint32(v>>31)) }

func encodeZigZag64(v int64) uint64 { return uint64(v<<1) ^ uint64(v>>63) }

func float32FromBits(v uint32) float32 { return math.Float32frombits(v) }

func float64FromBits(v uint64) float64 { return math.Float64frombits(v) }

func float32Bits(v float32) uint32 { return math.Float32bits(v) }

func float64Bits(v float64) uint64 { return math.Float64bits(v) }

func boolToVarint(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<7:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, byte(v)|0x80, byte(v>>7))
	}
	n := len(b)
	b = append(b, lengthPadding[:sizeVarint(v)]...)
	for v >= 0x80 {
		b[n] = byte(v) | 0x80
		v >>= 7
		n++
	}
	b[n] = byte(v)
	return b
}

func sizeVarint(v uint64) int {
	return int(9*uint32(bits.Len64(v))+64) / 64
}

func appendFixed32(b []byte, v uint32) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

func appendFixed64(b []byte, v uint64) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24),
		byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
}

func appendString(b []byte, s string) []byte {
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, v []byte) []byte {
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

var lengthPadding [10]byte

// finishDelimited completes a length-delimited value written in place: the caller
// appended one placeholder byte for the length, then the value (starting at start).
// Writing first and measuring after avoids sizing every nested message twice; a value
// of 128 bytes or more is moved right to make room for its longer length prefix.
func finishDelimited(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	k := sizeVarint(uint64(n))
	b = append(b, lengthPadding[:k-1]...)
	copy(b[start+k-1:], b[start:start+n])
	v := uint64(n)
	i := start - 1
	for v >= 0x80 {
		b[i] = byte(v) | 0x80
		v >>= 7
		i++
	}
	b[i] = byte(v)
	return b
}

// aliasString returns the bytes of a decoded string field as a string without copying.
// Generated Unmarshal copies its input once and decodes from that private copy, which
// nothing writes afterwards, so the strings and bytes of a message share one allocation
// instead of one each.
func aliasString(v []byte) string { return unsafe.String(unsafe.SliceData(v), len(v)) }

// grow makes room for n more elements, so a packed field is appended without copying.
func grow[T any](s []T, n int) []T {
	if n > cap(s)-len(s) {
		s = append(s[:cap(s)], make([]T, n-(cap(s)-len(s)))...)[:len(s)]
	}
	return s
}

func formatInt(v int64) string { return strconv.FormatInt(v, 10) }
