package synthesis

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// Client talks to a synthesis server.
type Client struct {
	Server string // http://HOST:PORT
	Token  string
	HTTP   *http.Client
}

func (c *Client) do(req *http.Request) (*http.Response, error) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	h := c.HTTP
	if h == nil {
		h = http.DefaultClient
	}
	resp, err := h.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return nil, fmt.Errorf("server: %s: %s", resp.Status, e.Error)
	}
	return resp, nil
}

// Create starts a session from req.URL, or, with upload, from the uploaded overlay of size
// bytes (the server answers at once and synthesises while the upload goes on).
func (c *Client) Create(ctx context.Context, req SessionRequest, upload io.Reader, size int64) (SessionStatus, error) {
	var st SessionStatus
	var hr *http.Request
	var err error
	var sent chan struct{} // closed once the transport is done with the upload
	if upload != nil {
		q := url.Values{"base": {req.Base}, "probe_path": {req.ProbePath}}
		for _, p := range req.Ports {
			q.Add("port", strconv.Itoa(p))
		}
		if req.ProbePort != 0 {
			q.Set("probe_port", strconv.Itoa(req.ProbePort))
		}
		if req.NoEarly {
			q.Set("no_early_start", "true")
		}
		body := &sentSignal{Reader: upload, sent: make(chan struct{})}
		sent = body.sent
		hr, err = http.NewRequestWithContext(ctx, http.MethodPost, c.Server+"/v1/sessions?"+q.Encode(), body)
		if err == nil {
			hr.ContentLength = size
			hr.Header.Set("Content-Type", "application/octet-stream")
		}
	} else {
		body, _ := json.Marshal(req)
		hr, err = http.NewRequestWithContext(ctx, http.MethodPost, c.Server+"/v1/sessions", bytes.NewReader(body))
		if err == nil {
			hr.Header.Set("Content-Type", "application/json")
		}
	}
	if err != nil {
		return st, err
	}
	resp, err := c.do(hr)
	if err != nil {
		return st, err
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	if sent == nil {
		resp.Body.Close()
		return st, err
	}
	// The server answers before the upload is through. Closing the answer now would make the
	// transport drop the connection, and the upload with it: close it once the upload is sent.
	go func() {
		<-sent
		resp.Body.Close()
	}()
	return st, err
}

// sentSignal is an upload body that tells when the transport is done with it: net/http closes
// a request body once it is written, or failed.
type sentSignal struct {
	io.Reader
	once sync.Once
	sent chan struct{}
}

func (s *sentSignal) Close() error {
	s.once.Do(func() { close(s.sent) })
	return nil
}

// Follow reads a session's events until it ends or stop returns true; it returns the state.
func (c *Client) Follow(ctx context.Context, id string, fn func(Event) (stop bool)) (string, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Server+"/v1/sessions/"+id+"/events", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.do(hr)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	kind := ""
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && kind == "timeline":
			var e Event
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e); err != nil {
				return "", fmt.Errorf("event stream: %w", err)
			}
			if fn(e) {
				return "running", nil
			}
		case strings.HasPrefix(line, "data: ") && kind == "end":
			var end struct{ State, Error string }
			json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &end)
			if end.Error != "" {
				return end.State, fmt.Errorf("session %s %s: %s", id, end.State, end.Error)
			}
			return end.State, nil
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("event stream of session %s ended early", id)
}

// Delete stops a session and removes it.
func (c *Client) Delete(ctx context.Context, id string) error {
	hr, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.Server+"/v1/sessions/"+id, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(hr)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
