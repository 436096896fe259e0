// Command uuid-service implements ids.v1.Ids (proto/ids/v1/ids.proto) with the okra.uuid
// host API, which a plugin outside OKRA provides (examples/plugins/okra-uuid).
//
// The SDK has no binding for a third party's API, so this file declares the host
// functions itself (//go:wasmimport) and calls them through okra.CallHost, which
// follows the host function convention: results in the caller's buffer, errors as
// *okra.Error with the host's message.
package main

import (
	"fmt"
	"unsafe"

	idsv1 "uuid-service/gen/ids/v1"

	"okra.dev/sdk/okra"
)

// The okra.uuid functions: (out_ptr, out_cap) -> i32, 16 bytes written to out_ptr.

//go:wasmimport okra.uuid v4
func uuidV4(outPtr unsafe.Pointer, outCap int32) int32

//go:wasmimport okra.uuid v7
func uuidV7(outPtr unsafe.Pointer, outCap int32) int32

// newUUID asks the host for a UUID through one of the functions above.
func newUUID(function func(unsafe.Pointer, int32) int32) ([16]byte, error) {
	var id [16]byte
	data, err := okra.CallHost(id[:], function)
	if err != nil {
		return id, err
	}
	if len(data) != len(id) {
		return id, okra.Errorf(okra.Internal, "okra.uuid returned %d bytes, not 16", len(data))
	}
	return id, nil // data is id's own array: the host wrote straight into it
}

// canonical formats a UUID as RFC 9562 text: 8-4-4-4-12 lower-case hex digits.
func canonical(id [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
}

type ids struct{}

// NewId returns a new UUID of the kind asked for (version 7 unless told otherwise).
func (ids) NewId(ctx *okra.Context, req *idsv1.NewIdRequest) (*idsv1.NewIdReply, error) {
	var function func(unsafe.Pointer, int32) int32
	switch req.Kind {
	case idsv1.Kind_KIND_V4:
		function = uuidV4
	case idsv1.Kind_KIND_V7, idsv1.Kind_KIND_UNSPECIFIED:
		function = uuidV7
	default:
		// Enums are open: a newer client may send a kind this build does not know.
		return nil, okra.Errorf(okra.InvalidArgument, "kind %v is not supported", req.Kind)
	}
	id, err := newUUID(function)
	if err != nil {
		return nil, err // an *okra.Error: its code and message reach the caller
	}
	return &idsv1.NewIdReply{Id: canonical(id)}, nil
}

// init registers the implementation. The host runs the module as a library (a WASI
// reactor): init functions run when an instance starts, main never does.
func init() {
	idsv1.RegisterIds(ids{})
}

func main() {}
