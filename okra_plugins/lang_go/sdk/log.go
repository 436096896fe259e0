package okra

// Bindings for the okra.log host API: structured records (a message and typed fields)
// that land in the service's log on the host.

import (
	"strings"
	"unicode/utf8"
	"unsafe"
)

//go:wasmimport okra.log write
func logWrite(level int32, ptr unsafe.Pointer, length int32) int32

//go:wasmimport okra.log enabled
func logEnabled(level int32) int32

// Level is the severity of a log record.
type Level int32

const (
	LevelDebug Level = 1
	LevelInfo  Level = 2
	LevelWarn  Level = 3
	LevelError Level = 4
)

type fieldKind uint8

const (
	kindString fieldKind = iota
	kindInt
	kindFloat
	kindBool
)

// Field is one key-value pair of a log record, made by String, Int, Int64, Float64,
// Bool or Err.
type Field struct {
	Key  string
	kind fieldKind
	str  string
	num  uint64
}

// String returns a string field.
func String(key, value string) Field { return Field{Key: key, kind: kindString, str: value} }

// Int returns an integer field.
func Int(key string, value int) Field { return Int64(key, int64(value)) }

// Int64 returns an integer field.
func Int64(key string, value int64) Field {
	return Field{Key: key, kind: kindInt, num: uint64(value)}
}

// Float64 returns a floating-point field.
func Float64(key string, value float64) Field {
	return Field{Key: key, kind: kindFloat, num: float64Bits(value)}
}

// Bool returns a boolean field.
func Bool(key string, value bool) Field {
	return Field{Key: key, kind: kindBool, num: boolToVarint(value)}
}

// Err returns a field "error" holding err's message ("<nil>" for nil).
func Err(err error) Field {
	if err == nil {
		return String("error", "<nil>")
	}
	return String("error", err.Error())
}

// Logger writes structured records to the service's log. Records below the level
// configured for the service (manifest "host_apis": {"okra.log": {"level": ...}}) are
// dropped by the host.
type Logger struct {
	fields []Field
}

var (
	defaultLogger Logger
	logBuf        []byte // reused, so logging does not allocate
)

// Log returns the service's logger, for code that has no Context at hand.
func Log() *Logger { return &defaultLogger }

// With returns a logger that adds fields to every record.
func (l *Logger) With(fields ...Field) *Logger {
	all := make([]Field, 0, len(l.fields)+len(fields))
	return &Logger{fields: append(append(all, l.fields...), fields...)}
}

// Enabled reports whether a record at level would be logged: check it before building
// fields that are costly to compute.
func (l *Logger) Enabled(level Level) bool { return logEnabled(int32(level)) == 1 }

// Debug logs a record at debug level.
func (l *Logger) Debug(msg string, fields ...Field) { l.write(LevelDebug, msg, fields) }

// Info logs a record at info level.
func (l *Logger) Info(msg string, fields ...Field) { l.write(LevelInfo, msg, fields) }

// Warn logs a record at warning level.
func (l *Logger) Warn(msg string, fields ...Field) { l.write(LevelWarn, msg, fields) }

// Error logs a record at error level.
func (l *Logger) Error(msg string, fields ...Field) { l.write(LevelError, msg, fields) }

// write encodes a LogRecord {message = 1; repeated LogField fields = 2} and hands it to
// the host.
func (l *Logger) write(level Level, msg string, fields []Field) {
	b := logBuf[:0]
	if msg != "" {
		b = append(b, 0x0a)
		b = appendString(b, validString(msg))
	}
	for i := range l.fields {
		b = appendLogField(b, &l.fields[i])
	}
	for i := range fields {
		b = appendLogField(b, &fields[i])
	}
	logWrite(int32(level), unsafe.Pointer(unsafe.SliceData(b)), int32(len(b)))
	logBuf = b[:0]
}

// appendLogField encodes a LogField {key = 1; oneof value {string_value = 2;
// sint64 int_value = 3; double double_value = 4; bool bool_value = 5}} as field 2 of
// the record.
func appendLogField(b []byte, f *Field) []byte {
	b = append(b, 0x12, 0)
	start := len(b)
	if f.Key != "" {
		b = append(b, 0x0a)
		b = appendString(b, validString(f.Key))
	}
	switch f.kind {
	case kindString:
		b = append(b, 0x12)
		b = appendString(b, validString(f.str))
	case kindInt:
		b = append(b, 0x18)
		b = appendVarint(b, encodeZigZag64(int64(f.num)))
	case kindFloat:
		b = append(b, 0x21)
		b = appendFixed64(b, f.num)
	case kindBool:
		b = append(b, 0x28)
		b = appendVarint(b, f.num)
	}
	return finishDelimited(b, start)
}

// validString replaces invalid UTF-8, which the host would reject with the record.
func validString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
