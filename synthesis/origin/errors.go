package origin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/cloudlet/cloudlet/internal/netguard"
)

// Errors of an HTTP origin go back to whoever asked for the overlay, who may be a stranger
// probing the cloudlet's network. So they are written here, from what we know: the URL without
// its query and user info (a presigned URL's query is a secret), a status as its code and Go's
// text for it. Nothing the upstream sent (its status text, headers, body, or the first bytes of
// a service that does not speak HTTP) is ever quoted.

// maxRedirects bounds the redirects followed for one request.
const maxRedirects = 5

var (
	errTooManyRedirects = fmt.Errorf("more than %d redirects", maxRedirects)
	errRedirectScheme   = errors.New("redirect to a URL that is not http or https")
)

// newHTTPClient returns the client of HTTP origins. With a guard, every connection is
// checked after DNS, on every redirect and retry, and no proxy is used: a proxy would connect
// on our behalf to addresses the guard never sees.
func newHTTPClient(guard *netguard.Guard) *http.Client {
	d := net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   8,
		ForceAttemptHTTP2:     true,
	}
	if guard != nil {
		t.Proxy = nil
		t.DialContext = guard.Dialer(d).DialContext
	}
	return &http.Client{Transport: t, CheckRedirect: checkRedirect}
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return errTooManyRedirects
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return errRedirectScheme
	}
	return nil
}

// redactURL is the URL as errors and logs may show it: no user info, query or fragment.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// cleanError has a message written here, free of URLs and upstream bytes; its cause stays
// reachable for errors.Is and errors.As, but is never printed.
type cleanError struct {
	msg   string
	cause error
}

func (e *cleanError) Error() string { return e.msg }
func (e *cleanError) Unwrap() error { return e.cause }

// transportError describes a failed request (no answer, or none that is HTTP), marking as
// final what a retry cannot mend.
func transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its message holds the whole URL
	}
	var refused *netguard.RefusedError
	var dns *net.DNSError
	var op *net.OpError
	var errno syscall.Errno
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	switch {
	case errors.As(err, &refused):
		return backoff.Permanent(refused) // its message is our own
	case errors.Is(err, errTooManyRedirects), errors.Is(err, errRedirectScheme):
		return backoff.Permanent(err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &dns):
		return &cleanError{fmt.Sprintf("cannot resolve %s", dns.Name), err}
	case errors.As(err, &certErr):
		return backoff.Permanent(&cleanError{"the server's TLS certificate is not trusted", err})
	case errors.As(err, &recErr):
		return backoff.Permanent(&cleanError{"the server does not speak TLS", err})
	case errors.As(err, &op) && op.Op == "dial" && errors.As(err, &errno):
		return &cleanError{"connect: " + errno.Error(), err}
	case errors.As(err, &netErr) && netErr.Timeout():
		return &cleanError{"timed out", err}
	case errors.As(err, &errno):
		return &cleanError{"connection failed: " + errno.Error(), err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &cleanError{"the connection closed before a complete answer", err}
	}
	return &cleanError{"no valid HTTP answer", err}
}

// StatusError is an HTTP answer that is not a success; 5xx and 429 are retried.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string { return "server answered " + statusText(e.Code) }

// statusText names a status by its code and Go's text for it, never the server's own.
func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return fmt.Sprintf("%d %s", code, t)
	}
	return fmt.Sprintf("status %d", code)
}

func statusError(resp *http.Response) error {
	if resp.StatusCode < 300 {
		return nil
	}
	err := &StatusError{Code: resp.StatusCode}
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		return err
	}
	return backoff.Permanent(err)
}
