// Package okra is the Go SDK for OKRA services.
//
// An OKRA service is a WebAssembly module described by Protocol Buffers. `okra build`
// generates Go types and a service interface from the project's .proto files (into
// gen/), and this package connects an implementation of that interface to the host:
//
//	type greeter struct{}
//
//	func (greeter) SayHello(ctx *okra.Context, req *greeterv1.HelloRequest) (*greeterv1.HelloReply, error) {
//		if req.Name == "" {
//			return nil, okra.Errorf(okra.InvalidArgument, "name must not be empty")
//		}
//		ctx.Log().Info("greeting", okra.String("name", req.Name))
//		return &greeterv1.HelloReply{Message: "Hello, " + req.Name}, nil
//	}
//
//	func init() { greeterv1.RegisterGreeter(greeter{}) }
//
//	func main() {}
//
// Register implementations in an init function: the host loads the module as a WASI
// reactor, so main is never called (it must exist, and may stay empty).
//
// A server-streaming method (rpc Watch(Req) returns (stream Resp)) gets a stream to
// send its responses with; each reaches the client as soon as it is sent:
//
//	func (greeter) GreetMany(ctx *okra.Context, req *greeterv1.GreetManyRequest, stream *greeterv1.GreeterGreetManyStream) error {
//		for i := range req.Count {
//			if err := stream.Send(&greeterv1.GreetManyReply{Index: i}); err != nil {
//				return err // the client has gone
//			}
//		}
//		return nil
//	}
//
// The package implements the guest side of the OKRA ABI, version 2 (docs/abi.md): the
// exports okra_abi_version, okra_buffer and okra_handle, the request and response
// envelopes, okra.abi.send for streams, and typed bindings for the host APIs: Log
// (okra.log), State (okra.state), Invoke and the generated clients of dependencies
// (okra.call), Now (okra.time), Config (okra.config), Secret (okra.secrets), HTTP
// (okra.http; package okrahttp adapts net/http) and NewCounter, NewGauge and
// NewHistogram (okra.metrics). It uses only the standard library, so a build never
// downloads a module.
package okra
