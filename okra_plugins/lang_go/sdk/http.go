package okra

// Bindings for the okra.http host API: outgoing HTTP requests, made by the host to the
// destinations okra.toml allows ([host_apis."okra.http"] allow = [...]). The host
// follows redirects (checking each hop against the allow list) and bounds sizes and
// time. For net/http's Client, see the okrahttp package.

import (
	"math"
	"time"
	"unsafe"
)

//go:wasmimport okra.http fetch
func httpFetch(reqPtr unsafe.Pointer, reqLen int32, outPtr unsafe.Pointer, outCap int32) int32

// HTTPHeader is one header line; a request or response may repeat a name.
type HTTPHeader struct {
	Name  string
	Value string
}

// HTTPRequest is a request for HTTPClient.Do.
type HTTPRequest struct {
	Method string // "" means GET
	URL    string // http:// or https://
	Header []HTTPHeader
	Body   []byte
	// Timeout bounds the whole exchange, redirects included (rounded up to whole
	// milliseconds); 0 means the host's limit (timeout_seconds, 10 s by default),
	// which also caps it.
	Timeout time.Duration
}

// HTTPResponse is the response to an HTTPRequest. Any status is a response, not an
// error: check Status.
type HTTPResponse struct {
	Status int
	Header []HTTPHeader
	Body   []byte
	URL    string // where the response came from, after redirects
}

// HeaderValue returns the first value of the response header name (compared
// case-insensitively), or "".
func (r *HTTPResponse) HeaderValue(name string) string {
	for _, h := range r.Header {
		if equalFoldASCII(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// HTTPClient makes HTTP requests through the host. Its zero value is ready to use;
// HTTP returns a shared one.
type HTTPClient struct {
	// Timeout applies to requests that set none.
	Timeout time.Duration
	// Header is added to every request, before the request's own headers.
	Header []HTTPHeader
}

var defaultHTTPClient HTTPClient

// HTTP returns the default client. A module that uses it needs [host_apis."okra.http"]
// in okra.toml, with an allow list that admits the destinations.
func HTTP() *HTTPClient { return &defaultHTTPClient }

var httpBuf []byte // the last HttpRequest encoded; reused

// Do sends req and returns the response. It fails with PermissionDenied when no entry
// of the allow list admits the URL (or a redirect's), Unavailable on network errors,
// DeadlineExceeded when the timeout passes, ResourceExhausted when the request or the
// response is larger than the host allows, InvalidArgument for a malformed request.
func (c *HTTPClient) Do(req *HTTPRequest) (*HTTPResponse, error) {
	timeout := req.Timeout
	if timeout == 0 {
		timeout = c.Timeout
	}
	if timeout < 0 {
		return nil, Errorf(DeadlineExceeded, "the timeout of the request to %s has already passed", req.URL)
	}
	ms := ceilMillis(timeout)
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	// HttpRequest { string method = 1; string url = 2; repeated Header headers = 3;
	// bytes body = 4; uint32 timeout_ms = 5; }
	b := httpBuf[:0]
	method := req.Method
	if method == "" {
		method = "GET"
	}
	b = append(b, 0x0a)
	b = appendString(b, validString(method))
	b = append(b, 0x12)
	b = appendString(b, validString(req.URL))
	for _, headers := range [2][]HTTPHeader{c.Header, req.Header} {
		for i := range headers {
			b = appendHTTPHeader(b, 3, &headers[i])
		}
	}
	if len(req.Body) > 0 {
		b = append(b, 0x22)
		b = appendBytes(b, req.Body)
	}
	if ms > 0 {
		b = append(b, 0x28)
		b = appendVarint(b, ms)
	}
	httpBuf = b
	data, owned, r := callScratch(func(ptr unsafe.Pointer, capacity int32) int32 {
		return httpFetch(bytesPtr(b), int32(len(b)), ptr, capacity)
	})
	if len(b) > maxScratch {
		httpBuf = nil // do not keep a large body's buffer for the instance's lifetime
	}
	if r < 0 {
		return nil, HostError(r)
	}
	return decodeHTTPResponse(ownedCopy(data, owned))
}

// Get sends a GET request to url.
func (c *HTTPClient) Get(url string) (*HTTPResponse, error) {
	return c.Do(&HTTPRequest{Method: "GET", URL: url})
}

// Post sends a POST request to url with body, of type contentType.
func (c *HTTPClient) Post(url, contentType string, body []byte) (*HTTPResponse, error) {
	req := &HTTPRequest{Method: "POST", URL: url, Body: body}
	if contentType != "" {
		req.Header = []HTTPHeader{{Name: "Content-Type", Value: contentType}}
	}
	return c.Do(req)
}

// appendHTTPHeader encodes a Header { string name = 1; string value = 2; } as field num.
func appendHTTPHeader(b []byte, num byte, h *HTTPHeader) []byte {
	b = append(b, num<<3|wireBytes, 0)
	start := len(b)
	if h.Name != "" {
		b = append(b, 0x0a)
		b = appendString(b, validString(h.Name))
	}
	if h.Value != "" {
		b = append(b, 0x12)
		b = appendString(b, validString(h.Value))
	}
	return finishDelimited(b, start)
}

// decodeHTTPResponse decodes an HttpResponse { uint32 status = 1; repeated Header
// headers = 2; bytes body = 3; string url = 4; }; its strings and body alias b, which
// the caller owns.
func decodeHTTPResponse(b []byte) (*HTTPResponse, error) {
	const typeName = "okra.http.HttpResponse"
	resp := &HTTPResponse{}
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return nil, hostDecodeError(typeName, n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == wireVarint:
			v, n := consumeVarint(b)
			if n < 0 {
				return nil, hostDecodeError(typeName, n)
			}
			resp.Status = int(uint32(v))
			b = b[n:]
		case num >= 2 && num <= 4 && typ == wireBytes:
			v, n := consumeBytes(b)
			if n < 0 {
				return nil, hostDecodeError(typeName, n)
			}
			switch num {
			case 2:
				h, err := decodeHTTPHeader(v)
				if err != nil {
					return nil, err
				}
				resp.Header = append(resp.Header, h)
			case 3:
				resp.Body = v
			case 4:
				resp.URL = aliasString(v)
			}
			b = b[n:]
		default:
			if n = skipField(b, num, typ, 0); n < 0 {
				return nil, hostDecodeError(typeName, n)
			}
			b = b[n:]
		}
	}
	return resp, nil
}

func decodeHTTPHeader(b []byte) (HTTPHeader, error) {
	const typeName = "okra.http.Header"
	var h HTTPHeader
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return h, hostDecodeError(typeName, n)
		}
		b = b[n:]
		if typ == wireBytes && (num == 1 || num == 2) {
			v, n := consumeBytes(b)
			if n < 0 {
				return h, hostDecodeError(typeName, n)
			}
			if num == 1 {
				h.Name = aliasString(v)
			} else {
				h.Value = aliasString(v)
			}
			b = b[n:]
			continue
		}
		if n = skipField(b, num, typ, 0); n < 0 {
			return h, hostDecodeError(typeName, n)
		}
		b = b[n:]
	}
	return h, nil
}
