package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
)

// Message is one line of a session's event stream: an event, or its end.
type Message struct {
	Event *synthesis.Event `json:"event,omitempty"`
	End   *State           `json:"end,omitempty"`
}

// handler is the control API on the socket: GET /status, GET /events?from=N (JSON lines: the
// events from the N-th on, each new one, then the end), POST /stop (with an optional JSON
// State whose Error becomes the session's failure; answers once the session ended).
func (s *supervisor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(State{State: "running"})
	})
	mux.HandleFunc("GET /events", s.serveEvents)
	mux.HandleFunc("POST /stop", s.serveStop)
	return mux
}

func (s *supervisor) serveEvents(w http.ResponseWriter, r *http.Request) {
	sent, _ := strconv.Atoi(r.URL.Query().Get("from"))
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	for {
		events, end, changed := s.since(sent)
		for i := range events {
			enc.Encode(Message{Event: &events[i]})
			sent++
		}
		if end != nil {
			enc.Encode(Message{End: end})
			rc.Flush()
			return
		}
		rc.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
	}
}

func (s *supervisor) serveStop(w http.ResponseWriter, r *http.Request) {
	var why State
	json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&why)
	var cause error
	if why.Error != "" {
		cause = errors.New(why.Error)
	}
	s.cancel(cause)
	select {
	case <-s.ended:
		w.WriteHeader(http.StatusNoContent)
	case <-r.Context().Done():
	}
}

// Client talks to one session's supervisor.
type Client struct {
	dir Dir
	hc  *http.Client
}

// NewClient returns a client of the supervisor of the session in d.
func NewClient(d Dir) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.Socket())
	}}
	return &Client{dir: d, hc: &http.Client{Transport: tr}}
}

// Close releases the client's connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Alive reports whether the supervisor answers on its socket.
func (c *Client) Alive(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://supervisor/status", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitAlive waits until a just-started supervisor answers, or ctx ends, or exited says it is
// gone.
func (c *Client) WaitAlive(ctx context.Context, exited func() bool) error {
	for !c.Alive(ctx) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("session %s: supervisor did not answer: %w", c.dir.ID(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if exited() {
			return fmt.Errorf("session %s: supervisor exited at start", c.dir.ID())
		}
	}
	return nil
}

// Follow streams the session's events from the from-th on into onEvent, and returns how it
// ended. An error means the stream broke before the end: the supervisor is gone (or ctx
// ended).
func (c *Client) Follow(ctx context.Context, from int, onEvent func(synthesis.Event)) (State, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://supervisor/events?from="+strconv.Itoa(from), nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return State{}, fmt.Errorf("session %s: supervisor: %w", c.dir.ID(), err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return State{}, fmt.Errorf("session %s: supervisor event: %w", c.dir.ID(), err)
		}
		if m.End != nil {
			return *m.End, nil
		}
		if m.Event != nil {
			onEvent(*m.Event)
		}
	}
	if err := sc.Err(); err != nil {
		return State{}, fmt.Errorf("session %s: supervisor: %w", c.dir.ID(), err)
	}
	return State{}, fmt.Errorf("session %s: supervisor: %w", c.dir.ID(), errors.New("the event stream ended early"))
}

// Stop asks the supervisor to stop the session (failed with why, if not empty) and waits
// until it ended.
func (c *Client) Stop(ctx context.Context, why string) error {
	b, _ := json.Marshal(State{Error: why})
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://supervisor/stop", bytes.NewReader(b))
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("session %s: stop: %w", c.dir.ID(), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("session %s: stop: supervisor answered %s", c.dir.ID(), resp.Status)
	}
	return nil
}
