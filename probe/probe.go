// Package probe waits for a VM to be ready: an HTTP answer, a TCP connect, or text on the
// serial console. The same probes mark "ready" for base create and "first response" for
// resume and synthesis timings.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Text is where a serial probe looks: the guest's console.
type Text interface {
	WaitFor(ctx context.Context, text string) error
}

// Probe is a parsed PROBE argument.
type Probe struct {
	kind   string // "http", "tcp" or "serial"
	target string // URL, host:port or text
}

// attemptTimeout bounds one try, so a guest that accepts but never answers is retried.
const attemptTimeout = 2 * time.Second

// retryInterval is the pause between tries; short, since probes time first responses.
const retryInterval = 20 * time.Millisecond

// Parse reads http://HOST:PORT/PATH (first 2xx), tcp://HOST:PORT (connect) or serial:TEXT.
func Parse(s string) (Probe, error) {
	switch {
	case strings.HasPrefix(s, "http://"), strings.HasPrefix(s, "https://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return Probe{}, fmt.Errorf("probe %q: bad URL", s)
		}
		return Probe{kind: "http", target: s}, nil
	case strings.HasPrefix(s, "tcp://"):
		hostport := strings.TrimPrefix(s, "tcp://")
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return Probe{}, fmt.Errorf("probe %q: want tcp://HOST:PORT: %w", s, err)
		}
		return Probe{kind: "tcp", target: hostport}, nil
	case strings.HasPrefix(s, "serial:"):
		text := strings.TrimPrefix(s, "serial:")
		if text == "" {
			return Probe{}, fmt.Errorf("probe %q: no text to wait for", s)
		}
		return Probe{kind: "serial", target: text}, nil
	}
	return Probe{}, fmt.Errorf("probe %q: want http://HOST:PORT/PATH, tcp://HOST:PORT or serial:TEXT", s)
}

func (p Probe) String() string {
	if p.kind == "tcp" {
		return "tcp://" + p.target
	}
	if p.kind == "serial" {
		return "serial:" + p.target
	}
	return p.target
}

// Wait retries the probe until it succeeds or ctx ends; the error then gives ctx's cause and
// what the last attempt saw (the one before, if ctx's end cut the last short: that says
// nothing of the target).
func (p Probe) Wait(ctx context.Context, console Text) error {
	if p.kind == "serial" {
		if err := console.WaitFor(ctx, p.target); err != nil {
			return fmt.Errorf("probe %s: %w", p, err)
		}
		return nil
	}
	client := &http.Client{Timeout: attemptTimeout}
	var last error
	for {
		err := p.try(ctx, client)
		if err == nil {
			return nil
		}
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("probe %s: %w (last attempt: %v)", p, context.Cause(ctx), last)
		case <-time.After(retryInterval):
		}
	}
}

// tcpSettle is how long a TCP connection must stay open to count. Through QEMU's user-net
// forwards the host side always accepts; when the guest refuses, QEMU closes the connection
// at once. A service that speaks first (SSH) counts as soon as it does.
const tcpSettle = 100 * time.Millisecond

func (p Probe) tryTCP(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(tcpSettle))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("connection closed at once: %w", err)
}

func (p Probe) try(ctx context.Context, client *http.Client) error {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	if p.kind == "tcp" {
		return p.tryTCP(actx)
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, p.target, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return errors.New("status " + resp.Status)
	}
	return nil
}
