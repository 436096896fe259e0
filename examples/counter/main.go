// Command counter implements the service counter.v1.Counter
// (proto/counter/v1/counter.proto): named running totals, kept in memory.
//
// It is a keyed service (okra.toml: [actor] kind = "keyed", key = { field = "name" }).
// The runtime gives every name its own instance of this module, an "activation", with
// its own linear memory, and runs one call at a time per name. So the Go globals below
// are the state of ONE counter, the one named by the requests this instance receives:
// no map from names to totals, no mutex, and no lost update when many callers Add to
// the same name at once (their calls queue up and run one after another).
//
// That state lives as long as the activation: after idle_seconds without a call, or
// when max_activations is reached and this is the least recently used name, the
// runtime passivates it (releases the instance, and its memory with it); the next call
// for the name starts a fresh instance, at 0. Redeploying the service starts fresh
// activations too. State that must outlive an activation belongs outside the guest.
package main

import (
	"math"

	counterv1 "counter/gen/counter/v1"

	"okra.dev/sdk/okra"
)

// The activation's state: one name's counter.
var (
	name  string // the key this activation belongs to, learnt from its first call
	total int64
	calls int64 // calls handled by this activation, for Get (shows when it restarted)
)

// counter implements counterv1.Counter.
type counter struct{}

// enter runs at the start of every call: it counts the call and, on the activation's
// first call, remembers its key and logs that the activation started.
func enter(ctx *okra.Context, key string) error {
	if key == "" {
		// The runtime refuses an empty key before the guest; this is for clarity.
		return okra.Errorf(okra.InvalidArgument, "name must not be empty")
	}
	if name == "" {
		name = key
		ctx.Log().Info("activated", okra.String("name", name))
	} else if key != name {
		// Cannot happen: the runtime routes each name to its own activation.
		return okra.Errorf(okra.Internal, "the activation of %q was called for %q", name, key)
	}
	calls++
	return nil
}

// Add adds delta to the total and returns the new total.
func (counter) Add(ctx *okra.Context, req *counterv1.AddRequest) (*counterv1.AddReply, error) {
	if err := enter(ctx, req.Name); err != nil {
		return nil, err
	}
	if (req.Delta > 0 && total > math.MaxInt64-req.Delta) || (req.Delta < 0 && total < math.MinInt64-req.Delta) {
		return nil, okra.Errorf(okra.OutOfRange, "adding %d to %d would overflow the total of %q", req.Delta, total, name)
	}
	total += req.Delta
	return &counterv1.AddReply{Name: name, Total: total}, nil
}

// Get returns the total without changing it.
func (counter) Get(ctx *okra.Context, req *counterv1.GetRequest) (*counterv1.GetReply, error) {
	if err := enter(ctx, req.Name); err != nil {
		return nil, err
	}
	return &counterv1.GetReply{Name: name, Total: total, Calls: calls}, nil
}

// Reset sets the total back to 0 and returns the total it had.
func (counter) Reset(ctx *okra.Context, req *counterv1.ResetRequest) (*counterv1.ResetReply, error) {
	if err := enter(ctx, req.Name); err != nil {
		return nil, err
	}
	previous := total
	total = 0
	ctx.Log().Info("reset", okra.String("name", name), okra.Int64("previous", previous))
	return &counterv1.ResetReply{Name: name, Previous: previous}, nil
}

// init registers the implementation. The host runs the module as a library (a WASI
// reactor): init functions run when an instance starts (here: when a name's activation
// starts), main never does.
func init() {
	counterv1.RegisterCounter(counter{})
}

func main() {}
