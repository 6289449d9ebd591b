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
	"sync"
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

// A try that has had no answer for hedgeAfter gets a fresh one beside it, up to maxTries in
// flight; past that the newest gives way to the next. A try is never closed for being slow:
// a guest that serves one request at a time (a VM paging its working set in over a slow
// link) would then work through the closed tries queued ahead of the live one before it
// answered, a whole request late each (measured: 2 s of a 39 s first answer at 10 Mbit/s).
// The fresh tries cover a request lost on its way (a guest whose network is not up yet).
const (
	hedgeAfter = 2 * time.Second
	maxTries   = 16
)

// retryInterval is the pause after a try fails; short, since probes time first responses.
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

// Wait tries the probe until a try succeeds or ctx ends; the error then gives ctx's cause and
// what the last try that ended saw (the one before, if ctx's end cut the last short: that says
// nothing of the target).
func (p Probe) Wait(ctx context.Context, console Text) error {
	if p.kind == "serial" {
		if err := console.WaitFor(ctx, p.target); err != nil {
			return fmt.Errorf("probe %s: %w", p, err)
		}
		return nil
	}
	t := newTries(ctx, p)
	defer t.stop()
	var last error
	t.start()
	next := time.NewTimer(hedgeAfter)
	defer next.Stop()
	for {
		select {
		case r := <-t.results:
			if !t.end(r.id) {
				continue // it gave way to a newer try
			}
			if r.err == nil {
				return nil
			}
			if last == nil || ctx.Err() == nil {
				last = r.err
			}
			next.Reset(retryInterval)
		case <-next.C:
			t.start()
			next.Reset(hedgeAfter)
		case <-ctx.Done():
			if last == nil {
				last = errors.New("no try has had an answer")
			}
			return fmt.Errorf("probe %s: %w (last attempt: %v)", p, context.Cause(ctx), last)
		}
	}
}

// tries are the probe's tries in flight, each in a goroutine of its own.
type tries struct {
	ctx     context.Context
	cancel  context.CancelFunc
	p       Probe
	client  *http.Client
	wg      sync.WaitGroup
	results chan tryResult
	live    map[int]context.CancelFunc
	last    int // the newest try's number
}

type tryResult struct {
	id  int
	err error
}

func newTries(ctx context.Context, p Probe) *tries {
	ctx, cancel := context.WithCancel(ctx)
	// No keep-alive: each try is a connection of its own, closed when it ends.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	return &tries{ctx: ctx, cancel: cancel, p: p, client: client, results: make(chan tryResult), live: map[int]context.CancelFunc{}}
}

// start begins a try; at maxTries in flight, the newest gives way to it.
func (t *tries) start() {
	if len(t.live) >= maxTries {
		newest := -1
		for id := range t.live {
			newest = max(newest, id)
		}
		t.end(newest)
	}
	t.last++
	id := t.last
	ctx, cancel := context.WithCancel(t.ctx)
	t.live[id] = cancel
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		err := t.p.try(ctx, t.client)
		select {
		case t.results <- tryResult{id, err}:
		case <-t.ctx.Done():
		}
	}()
}

// end cancels a try and forgets it; false if it had already ended.
func (t *tries) end(id int) bool {
	cancel, ok := t.live[id]
	if ok {
		cancel()
		delete(t.live, id)
	}
	return ok
}

// stop ends every try and waits for them.
func (t *tries) stop() {
	t.cancel()
	t.wg.Wait()
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
	if p.kind == "tcp" {
		return p.tryTCP(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.target, nil)
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
