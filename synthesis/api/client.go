package api

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

	"github.com/cloudlet/cloudlet/synthesis"
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
		return nil, &APIError{Code: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// APIError is a server's answer that is not a success.
type APIError struct {
	Code    int
	Message string // the server's JSON error, if it sent one
}

func (e *APIError) Error() string {
	return fmt.Sprintf("server: %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
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
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
	if err != nil {
		err = fmt.Errorf("server answer to create: %w", err)
	} else {
		err = checkCreated(req, st)
	}
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
func (c *Client) Follow(ctx context.Context, id string, fn func(synthesis.Event) (stop bool)) (string, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Server+"/v1/sessions/"+url.PathEscape(id)+"/events", nil)
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
			var e synthesis.Event
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
	hr, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.Server+"/v1/sessions/"+url.PathEscape(id), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(hr)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// checkCreated refuses a create answer the client cannot use. It is a server's word, and a
// wrong or hostile server gets a clear error, not a panic or a request to an odd path.
func checkCreated(req SessionRequest, st SessionStatus) error {
	if !validSessionID(st.ID) {
		return fmt.Errorf("server answer to create: session ID %.40q, want 1 to 64 letters, digits, '-' or '_'", st.ID)
	}
	if st.Base == "" {
		return fmt.Errorf("server answer to create: session %s names no base", st.ID)
	}
	for _, p := range append([]int{req.ProbePort}, req.Ports...) {
		if _, ok := st.Forwards[strconv.Itoa(p)]; p != 0 && !ok {
			return fmt.Errorf("server answer to create: session %s forwards no host port to guest port %d", st.ID, p)
		}
	}
	return nil
}

func validSessionID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
