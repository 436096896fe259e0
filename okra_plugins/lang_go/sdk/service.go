package okra

// Handler runs one method on its encoded input: it decodes the request, calls the
// implementation and appends the encoded response to out. Generated code provides one
// per method; implementations never see it.
type Handler func(ctx *Context, input []byte, out []byte) ([]byte, error)

// StreamHandler runs one server-streaming method on its encoded input: it decodes the
// request and calls the implementation, which sends its responses through stream.
// Generated code provides one per streaming method.
type StreamHandler func(ctx *Context, input []byte, stream *Stream) error

// Method names the handler of one method within a service: Handler for a unary method,
// Stream for a server-streaming one.
type Method struct {
	Name    string
	Handler Handler
	Stream  StreamHandler
}

// Message is what every generated message type implements.
type Message interface {
	// MarshalAppend appends the message's binary encoding to b.
	MarshalAppend(b []byte) ([]byte, error)
	// Unmarshal replaces the message's contents with the decoded input.
	Unmarshal(b []byte) error
}

type service struct {
	name    string
	methods map[string]*Method
}

var services = map[string]*service{}

// RegisterService makes a service's methods callable. Generated Register functions
// (such as RegisterGreeter) call it; implementations call those instead. Registering
// the same service twice panics, since only one implementation can answer.
func RegisterService(name string, methods ...Method) {
	if _, dup := services[name]; dup {
		panic("okra: service " + name + " is registered twice")
	}
	s := &service{name: name, methods: make(map[string]*Method, len(methods))}
	for i := range methods {
		s.methods[methods[i].Name] = &methods[i]
	}
	services[name] = s
}

// lookup finds a method; the []byte-to-string conversions in the map index do not
// allocate. An empty service name selects the only registered service, if there is one.
func lookup(serviceName, methodName []byte) (*service, *Method, error) {
	s := services[string(serviceName)]
	if s == nil && len(serviceName) == 0 && len(services) == 1 {
		for _, only := range services {
			s = only
		}
	}
	if s == nil {
		return nil, nil, NewError(Unimplemented, "service "+string(serviceName)+" is not implemented by this module")
	}
	m := s.methods[string(methodName)]
	if m == nil {
		return nil, nil, NewError(Unimplemented, "method "+string(methodName)+" is not implemented by "+s.name)
	}
	return s, m, nil
}
