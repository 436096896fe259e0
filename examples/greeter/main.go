// Command greeter implements the service greeter.v1.Greeter
// (proto/greeter/v1/greeter.proto).
//
// `okra build` generates the Go types into gen/ (package greeterv1) and compiles this
// package to WebAssembly; `okra dev` also serves it and rebuilds on changes.
package main

import (
	"fmt"
	"strings"
	"time"

	greeterv1 "greeter/gen/greeter/v1"

	"okra.dev/sdk/okra"
)

// greeter implements greeterv1.Greeter. It keeps no state between calls: the host may
// run several instances of the module, each with its own memory.
type greeter struct{}

const (
	maxTimes      = 10
	maxStreamed   = 100
	maxIntervalMs = 10000
)

var helloIn = map[greeterv1.Language]string{
	greeterv1.Language_LANGUAGE_UNSPECIFIED: "Hello",
	greeterv1.Language_LANGUAGE_ENGLISH:     "Hello",
	greeterv1.Language_LANGUAGE_FRENCH:      "Bonjour",
	greeterv1.Language_LANGUAGE_GERMAN:      "Hallo",
	greeterv1.Language_LANGUAGE_SPANISH:     "Hola",
}

// SayHello greets someone in their language, one or more times.
func (greeter) SayHello(ctx *okra.Context, req *greeterv1.HelloRequest) (*greeterv1.HelloReply, error) {
	name := strings.TrimSpace(req.Name)
	if name == "" {
		// The code reaches the caller as gRPC status INVALID_ARGUMENT.
		return nil, okra.Errorf(okra.InvalidArgument, "name must not be empty")
	}
	hello, ok := helloIn[req.Language]
	if !ok {
		// Enums are open: a newer client may send a value this build does not know.
		return nil, okra.Errorf(okra.InvalidArgument, "language %v is not supported", req.Language)
	}
	times := req.Times
	if times == 0 {
		times = 1
	}
	if times < 1 || times > maxTimes {
		return nil, okra.Errorf(okra.OutOfRange, "times must be between 1 and %d, not %d", maxTimes, req.Times)
	}

	greeting := hello + ", " + name + "!"
	reply := &greeterv1.HelloReply{Message: greeting, Greetings: make([]string, 0, times)}
	for i := int64(1); i <= times; i++ {
		reply.Greetings = append(reply.Greetings, fmt.Sprintf("%d. %s", i, greeting))
	}
	ctx.Log().Info("greeted",
		okra.String("name", name),
		okra.String("language", req.Language.String()),
		okra.Int64("times", times),
	)
	return reply, nil
}

// Summarize describes a team: its size, its oldest member, how many people hold each
// role and how to reach them.
func (greeter) Summarize(ctx *okra.Context, team *greeterv1.Team) (*greeterv1.TeamSummary, error) {
	if team.Name == "" {
		return nil, okra.Errorf(okra.InvalidArgument, "team name must not be empty")
	}
	summary := &greeterv1.TeamSummary{
		Team:        team.Name,
		MemberCount: int64(len(team.Members)),
		RoleCounts:  map[string]int64{},
	}
	var totalAge int64
	for i, person := range team.Members {
		if person.GetName() == "" {
			return nil, okra.Errorf(okra.InvalidArgument, "member %d of team %s has no name", i+1, team.Name)
		}
		if person.Age < 0 {
			return nil, okra.Errorf(okra.InvalidArgument, "%s cannot be %d years old", person.Name, person.Age)
		}
		totalAge += int64(person.Age)
		if summary.Oldest == nil || person.Age > summary.Oldest.Age {
			summary.Oldest = person
		}
		summary.RoleCounts[roleName(person.Role)]++

		// A oneof is an interface field; a type switch finds which member is set.
		// Getters are nil-safe, so a person without a Contact needs no special case.
		switch method := person.GetContact().GetMethod().(type) {
		case *greeterv1.Contact_Email:
			summary.MailingList = append(summary.MailingList, person.Name+" <"+method.Email+">")
		case *greeterv1.Contact_Phone:
			// reachable, but not by email
		default:
			summary.Unreachable = append(summary.Unreachable, person.Name)
		}
	}
	if len(team.Members) > 0 {
		summary.AverageAge = float64(totalAge) / float64(len(team.Members))
	}

	log := ctx.Log()
	if log.Enabled(okra.LevelDebug) { // skip building fields nobody will read
		log.Debug("summarized team",
			okra.String("team", team.Name),
			okra.Int("members", len(team.Members)),
			okra.Float64("average_age", summary.AverageAge),
			okra.Bool("everyone_reachable", len(summary.Unreachable) == 0),
		)
	}
	return summary, nil
}

// GreetMany streams greetings, one every interval_ms: each reaches the client as soon
// as it is sent.
func (greeter) GreetMany(ctx *okra.Context, req *greeterv1.GreetManyRequest, stream *greeterv1.GreeterGreetManyStream) error {
	name := strings.TrimSpace(req.Name)
	if name == "" {
		return okra.Errorf(okra.InvalidArgument, "name must not be empty")
	}
	hello, ok := helloIn[req.Language]
	if !ok {
		return okra.Errorf(okra.InvalidArgument, "language %v is not supported", req.Language)
	}
	count := req.Count
	if count == 0 {
		count = 3
	}
	if count < 1 || count > maxStreamed {
		return okra.Errorf(okra.OutOfRange, "count must be between 1 and %d, not %d", maxStreamed, req.Count)
	}
	if req.IntervalMs < 0 || req.IntervalMs > maxIntervalMs {
		return okra.Errorf(okra.OutOfRange, "interval_ms must be between 0 and %d, not %d", maxIntervalMs, req.IntervalMs)
	}
	for i := int32(1); i <= count; i++ {
		if req.FailAfter > 0 && i > req.FailAfter {
			// Everything sent so far has reached the client; the error ends the stream.
			return okra.Errorf(okra.Aborted, "stopped after %d greetings, as asked", req.FailAfter)
		}
		if i > 1 && req.IntervalMs > 0 {
			time.Sleep(time.Duration(req.IntervalMs) * time.Millisecond)
		}
		reply := &greeterv1.GreetManyReply{Index: i, Message: fmt.Sprintf("%s, %s! (%d/%d)", hello, name, i, count)}
		if err := stream.Send(reply); err != nil {
			// The client has gone or the deadline has passed: nobody listens any more.
			ctx.Log().Info("stream ended early", okra.Int("sent", int(i-1)), okra.Err(err))
			return err
		}
	}
	return nil
}

// roleName turns ROLE_ENGINEER into "engineer"; a role this build does not know keeps
// its number.
func roleName(role greeterv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(role.String(), "ROLE_"))
}

// init registers the implementation. The host runs the module as a library (a WASI
// reactor): init functions run when an instance starts, main never does.
func init() {
	greeterv1.RegisterGreeter(greeter{})
}

func main() {}
