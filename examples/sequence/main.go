// Command sequence implements the service sequence.v1.Sequence
// (proto/sequence/v1/sequence.proto): increasing numbers, handed out one at a time.
//
// It is a singleton (okra.toml: [actor] kind = "singleton"). The runtime runs exactly
// one instance of this module and gives it one call at a time, in arrival order. So a
// plain Go global is the service's state: every call sees what the previous one left,
// and no two calls run at once (no mutex needed, no number handed out twice).
//
// The state lives in the instance's memory, and the instance lives until the service
// is redeployed (or passivates after idle_seconds without calls, if okra.toml sets it;
// it does not here). A redeployed sequence starts again from 1: numbers that must
// survive a redeploy belong outside the guest.
package main

import (
	"math"

	sequencev1 "sequence/gen/sequence/v1"

	"okra.dev/sdk/okra"
)

// The singleton's state.
var (
	last    int64 // the last number handed out; 0 before the first
	started bool  // whether this instance has handled a call yet
)

// sequence implements sequencev1.Sequence.
type sequence struct{}

// enter logs the first call this instance handles: the moment the singleton's state
// starts from scratch (after a deploy, a redeploy or a passivation).
func enter(ctx *okra.Context) {
	if !started {
		started = true
		ctx.Log().Info("activated: the sequence starts at 1")
	}
}

// Next hands out the next number.
func (sequence) Next(ctx *okra.Context, _ *sequencev1.NextRequest) (*sequencev1.NextReply, error) {
	enter(ctx)
	if last == math.MaxInt64 {
		return nil, okra.Errorf(okra.ResourceExhausted, "the sequence is used up: %d was the last number", last)
	}
	last++
	return &sequencev1.NextReply{Value: last}, nil
}

// Peek tells the last number handed out, without taking one.
func (sequence) Peek(ctx *okra.Context, _ *sequencev1.PeekRequest) (*sequencev1.PeekReply, error) {
	enter(ctx)
	return &sequencev1.PeekReply{Last: last}, nil
}

// init registers the implementation. The host runs the module as a library (a WASI
// reactor): init functions run when the instance starts, main never does.
func init() {
	sequencev1.RegisterSequence(sequence{})
}

func main() {}
