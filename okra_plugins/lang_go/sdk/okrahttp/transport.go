// Package okrahttp lets net/http's Client send its requests through the okra.http host
// API, so code written against *http.Client (and libraries that take one) works in an
// OKRA guest:
//
//	client := okrahttp.Client()
//	resp, err := client.Get("https://api.example.com/v1/rates")
//
// It is a package of its own because net/http adds about 7 MB to a module: only the
// services that import it pay for it. okra.HTTP() does the same job with no such cost.
//
// The host makes the request: it follows redirects itself (each hop checked against
// the allow list in okra.toml), so a response never asks the Client to redirect, and
// Transport settings such as proxies, TLS configuration and connection pools have no
// equivalent. Errors of the host (PermissionDenied for a destination not allowed,
// Unavailable, DeadlineExceeded) come back from the Client wrapped in a *url.Error,
// with the *okra.Error in its chain.
package okrahttp

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"time"

	"okra.dev/sdk/okra"
)

// Transport is an http.RoundTripper over okra.http. Its zero value uses the default
// okra.HTTPClient.
type Transport struct {
	// Client makes the requests; nil means okra.HTTP().
	Client *okra.HTTPClient
}

var _ http.RoundTripper = (*Transport)(nil)

// Client returns an http.Client whose requests go through okra.http.
func Client() *http.Client { return &http.Client{Transport: &Transport{}} }

// RoundTrip sends req through the host. The request's context deadline, if any,
// becomes the request's timeout.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	client := t.Client
	if client == nil {
		client = okra.HTTP()
	}
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	r := &okra.HTTPRequest{Method: req.Method, URL: req.URL.String(), Body: body}
	for name, values := range req.Header {
		for _, value := range values {
			r.Header = append(r.Header, okra.HTTPHeader{Name: name, Value: value})
		}
	}
	if req.Host != "" && req.Host != req.URL.Host {
		// okra.http sends every request to the host its URL names, with that Host: a
		// guest-chosen Host could reach another virtual host behind an allowed address.
		return nil, okra.Errorf(okra.InvalidArgument,
			"okrahttp: Request.Host %q differs from the URL's host %q; okra.http does not allow "+
				"overriding Host: put the host in the URL", req.Host, req.URL.Host)
	}
	if deadline, ok := req.Context().Deadline(); ok {
		r.Timeout = time.Until(deadline)
		if r.Timeout <= 0 {
			return nil, req.Context().Err()
		}
	}
	resp, err := client.Do(r)
	if err != nil {
		return nil, err
	}
	header := make(http.Header, len(resp.Header))
	for _, h := range resp.Header {
		header.Add(h.Name, h.Value)
	}
	return &http.Response{
		Status:        strconv.Itoa(resp.Status) + " " + http.StatusText(resp.Status),
		StatusCode:    resp.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          io.NopCloser(bytes.NewReader(resp.Body)),
		ContentLength: int64(len(resp.Body)),
		Request:       req,
	}, nil
}
