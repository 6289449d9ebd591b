package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
	"github.com/cloudlet/cloudlet/vm"
)

// ServerOptions configure the synthesis server.
type ServerOptions struct {
	Store *base.Store
	// ForwardHost is the address host ports are opened on (the listener's host).
	ForwardHost string
	// Tokens are the bearer tokens a request must carry ("Authorization: Bearer TOKEN"), on
	// any listener; each token's holder sees and stops only its own sessions. With none,
	// every request is refused.
	Tokens []string
	// AllowOrigins are ranges origin URLs may reach although they are not public (loopback,
	// private, link-local...): by default the server refuses them, after DNS and redirects.
	AllowOrigins []netip.Prefix

	MaxSessions int
	MaxUpload   int64
	VM          vm.Options // accelerator and such, shared by all sessions
	Log         *log.Logger
	// MaxOverlay bounds the size an origin claims (a URL's Content-Range total, an upload's
	// Content-Length), checked before any of it is read; 0 means DefaultMaxOverlay.
	MaxOverlay int64
	// UploadIdle is how long an upload may send nothing before it, and its session, fail;
	// 0 means DefaultUploadIdle.
	UploadIdle time.Duration
	// RequestTimeout bounds reading a request body and writing an answer; streams (uploads,
	// events) get it anew on each progress. 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// PruneAfter is how long a failed or stopped session stays visible; 0 means
	// DefaultPruneAfter.
	PruneAfter time.Duration
	// HTTP tunes the HTTP origins of URL sessions.
	HTTP origin.HTTPOptions
	// Chunks, if set, is the cache of verified chunks that sessions share: a session takes
	// from it what it has and puts there what it fetched. A supervised session opens the same
	// directory with the same bound in its own process.
	Chunks *chunkstore.Store

	// Sessions, if set, is the directory of session directories: each session then runs in
	// a supervisor process of its own, which StartSupervisor starts and which outlives the
	// server. A new server re-adopts the sessions it finds there. StopOnExit stops them when
	// the server's context ends; else they keep running.
	Sessions        string
	StartSupervisor func(supervisor.Dir) (*exec.Cmd, error)
	StopOnExit      bool

	// run synthesises one session; nil means the server's own (open the origin, check its
	// size, Run). Tests put a stand-in here to drive the API without QEMU.
	run func(context.Context, synthesis.Options) (synthesis.Timeline, error)
}

// SessionRequest is the body of POST /v1/sessions (or its query, with an upload).
type SessionRequest struct {
	Base string `json:"base"`
	URL  string `json:"url,omitempty"`
	// Ports are guest TCP ports to forward; each gets a host port, returned in the session.
	Ports []int `json:"ports"`
	// ProbePort and ProbePath make the server time the first HTTP answer of the guest.
	ProbePort int    `json:"probe_port,omitempty"`
	ProbePath string `json:"probe_path,omitempty"`
	NoEarly   bool   `json:"no_early_start,omitempty"`
	Bandwidth int64  `json:"bandwidth,omitempty"`

	owner      owner // the token that asks, set by the server (never from the body)
	uploadSize int64 // the upload's Content-Length, set by the server
}

// SessionStatus is what GET /v1/sessions/{id} answers.
type SessionStatus struct {
	ID       string            `json:"id"`
	Base     string            `json:"base"`
	State    string            `json:"state"` // running, failed, stopped
	Error    string            `json:"error,omitempty"`
	Forwards map[string]string `json:"forwards"` // guest port -> host address
	Timeline []synthesis.Event `json:"timeline"`
}

// Server is the HTTP/JSON synthesis API.
type Server struct {
	opts ServerOptions
	ctx  context.Context

	mu       sync.Mutex
	sessions map[string]*session
	starting int // slots reserved by sessions being set up, not yet in sessions
	wg       sync.WaitGroup
}

type session struct {
	status SessionStatus
	// cancel stops the session; a cause other than context.Canceled becomes its error.
	cancel  context.CancelCauseFunc
	ctx     context.Context
	done    chan struct{}
	changed chan struct{} // closed and replaced on each event
	draft   *base.Draft
	ended   time.Time      // when it failed or stopped; zero while running
	owner   owner          // whose token made it; fixed after construction
	dir     supervisor.Dir // with supervisors, the session's directory; fixed after construction
}

// NewServer returns a server whose sessions live until ctx ends.
func NewServer(ctx context.Context, opts ServerOptions) *Server {
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 2
	}
	if opts.MaxUpload <= 0 {
		opts.MaxUpload = 8 << 30
	}
	if opts.Log == nil {
		opts.Log = log.Default()
	}
	if opts.MaxOverlay <= 0 {
		opts.MaxOverlay = DefaultMaxOverlay
	}
	if opts.UploadIdle <= 0 {
		opts.UploadIdle = DefaultUploadIdle
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.PruneAfter <= 0 {
		opts.PruneAfter = DefaultPruneAfter
	}
	// Clients choose the URLs: the server must not become their way into its own network.
	opts.HTTP.Guard = netguard.New(opts.AllowOrigins...)
	s := &Server{opts: opts, ctx: ctx, sessions: map[string]*session{}}
	if s.opts.run == nil {
		s.opts.run = s.synthesise
	}
	if s.opts.Sessions != "" {
		s.adopt()
	}
	return s
}

// Handler is the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/bases", s.listBases)
	mux.HandleFunc("POST /v1/sessions", s.createSession)
	mux.HandleFunc("GET /v1/sessions", s.listSessions)
	mux.HandleFunc("GET /v1/sessions/{id}", s.getSession)
	mux.HandleFunc("GET /v1/sessions/{id}/events", s.sessionEvents)
	mux.HandleFunc("DELETE /v1/sessions/{id}", s.deleteSession)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		jsonError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.requireToken(mux)
}

// Wait blocks until every session has stopped (after the server's context ended).
func (s *Server) Wait() { s.wg.Wait() }

func jsonError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) listBases(w http.ResponseWriter, r *http.Request) {
	bases, _ := s.opts.Store.List()
	type info struct {
		ID          string `json:"id"`
		Name        string `json:"name,omitempty"`
		MemoryBytes int64  `json:"memory_bytes"`
		DiskBytes   int64  `json:"disk_bytes"`
	}
	out := []info{}
	for _, b := range bases {
		out = append(out, info{b.ID, b.Manifest.Name, b.Manifest.VM.MemoryBytes, b.Manifest.Files[base.DiskFile].Size})
	}
	writeJSON(w, http.StatusOK, out)
}

// createSession starts a synthesis from a URL (JSON body) or from the request body itself (an
// upload: Content-Type application/octet-stream, parameters in the query).
func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	req := SessionRequest{owner: ownerOf(r)}
	upload := r.Header.Get("Content-Type") == "application/octet-stream"
	if upload {
		q := r.URL.Query()
		req.Base, req.ProbePath = q.Get("base"), q.Get("probe_path")
		for _, p := range q["port"] {
			n, err := strconv.Atoi(p)
			if err != nil {
				jsonError(w, http.StatusBadRequest, fmt.Errorf("port %q is not a number", p))
				return
			}
			req.Ports = append(req.Ports, n)
		}
		req.ProbePort, _ = strconv.Atoi(q.Get("probe_port"))
		req.NoEarly = q.Get("no_early_start") == "true"
		req.uploadSize = r.ContentLength
		if r.ContentLength <= 0 {
			jsonError(w, http.StatusLengthRequired, errors.New("an upload needs a Content-Length"))
			return
		}
		if limit := min(s.opts.MaxUpload, s.opts.MaxOverlay); r.ContentLength > limit {
			jsonError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("upload of %d bytes exceeds the limit of %d", r.ContentLength, limit))
			return
		}
	} else {
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			jsonError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
			return
		}
		if req.URL == "" {
			jsonError(w, http.StatusBadRequest, errors.New("give an overlay url, or upload the overlay as application/octet-stream"))
			return
		}
		if !strings.HasPrefix(req.URL, "http://") && !strings.HasPrefix(req.URL, "https://") && !strings.HasPrefix(req.URL, "oci://") {
			jsonError(w, http.StatusBadRequest, fmt.Errorf("url %q: want http://, https:// or oci://", req.URL))
			return
		}
	}
	if err := checkPorts(req); err != nil {
		jsonError(w, http.StatusBadRequest, err)
		return
	}
	b, err := s.opts.Store.Get(req.Base)
	if err != nil {
		jsonError(w, http.StatusNotFound, err)
		return
	}
	sess, o, err := s.newSession(req, b)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, errBusy) {
			code = http.StatusTooManyRequests
		}
		jsonError(w, code, err)
		return
	}
	var up *origin.Upload
	if upload {
		if up, err = origin.NewUpload(s.spoolPath(sess), r.ContentLength); err != nil {
			s.endSession(sess, err)
			jsonError(w, http.StatusInternalServerError, err)
			return
		}
		o.Origin = up
	}
	s.run(sess, o)
	if !upload {
		writeJSON(w, http.StatusCreated, s.statusOf(sess))
		return
	}
	// Answer at once, then keep reading the body: the synthesis uses it as it arrives. The
	// body must keep coming: a stalled upload fails, and takes its session with it.
	rc := http.NewResponseController(w)
	rc.EnableFullDuplex()
	writeJSON(w, http.StatusCreated, s.statusOf(sess))
	rc.Flush()
	err = up.Receive(idleReader{r: r.Body, rc: rc, idle: s.opts.UploadIdle})
	if err != nil && sess.ctx.Err() == nil { // else the session ended first, and closed the upload
		s.opts.Log.Printf("session %s: %v", sess.status.ID, err)
		sess.cancel(err)
	}
}

// newSession reserves a slot and sets a session up; the slot is given back if that fails.
func (s *Server) newSession(req SessionRequest, b *base.Base) (*session, synthesis.Options, error) {
	if err := s.reserve(); err != nil {
		return nil, synthesis.Options{}, err
	}
	added := false
	defer func() {
		if !added {
			s.unreserve()
		}
	}()
	sess, o, err := s.prepareSession(req, b)
	if err != nil {
		return nil, synthesis.Options{}, err
	}
	if err := s.createDir(sess, req, o); err != nil {
		sess.draft.Discard()
		return nil, synthesis.Options{}, err
	}
	sess.ctx, sess.cancel = context.WithCancelCause(s.ctx)
	s.mu.Lock()
	s.starting-- // the session holds the slot from here on: one lock, no moment counted twice
	s.sessions[sess.status.ID] = sess
	added = true
	s.mu.Unlock()
	return sess, o, nil
}

func (s *Server) prepareSession(req SessionRequest, b *base.Base) (*session, synthesis.Options, error) {
	draft, err := s.opts.Store.NewDraft()
	if err != nil {
		return nil, synthesis.Options{}, err
	}
	idb := make([]byte, 8)
	rand.Read(idb)
	sess := &session{owner: req.owner, draft: draft, done: make(chan struct{}), changed: make(chan struct{}),
		status: SessionStatus{ID: hex.EncodeToString(idb), Base: b.ID, State: "running", Forwards: map[string]string{}}}
	vmo := s.opts.VM
	vmo.Forwards = nil
	vmo.Name = sess.status.ID
	for _, p := range req.Ports {
		hp, err := freePort(s.opts.ForwardHost)
		if err != nil {
			draft.Discard()
			return nil, synthesis.Options{}, err
		}
		vmo.Forwards = append(vmo.Forwards, vm.Forward{Proto: "tcp", HostAddr: s.opts.ForwardHost, HostPort: hp, GuestPort: p})
		sess.status.Forwards[strconv.Itoa(p)] = net.JoinHostPort(s.opts.ForwardHost, strconv.Itoa(hp))
	}
	o := synthesis.Options{Base: b, Source: req.URL, HTTP: s.opts.HTTP, CacheDir: draft.Path("cache"), MountDir: draft.Path("mnt"), VM: vmo,
		EarlyStart: !req.NoEarly, Fetch: synthesis.FetchOptions{BytesPerSecond: req.Bandwidth}, ProbeTimeout: 5 * time.Minute}
	if s.opts.Chunks != nil {
		o.Fetch.Store = s.opts.Chunks
	}
	if req.ProbePort != 0 {
		addr, ok := sess.status.Forwards[strconv.Itoa(req.ProbePort)]
		if !ok {
			draft.Discard()
			return nil, synthesis.Options{}, fmt.Errorf("probe port %d is not among the forwarded ports", req.ProbePort)
		}
		path := req.ProbePath
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		pr, err := probe.Parse("http://" + addr + path)
		if err != nil {
			draft.Discard()
			return nil, synthesis.Options{}, err
		}
		o.Probe = &pr
	}
	return sess, o, nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("allocate a host port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// run starts the session's synthesis; it runs until deleted or the server stops.
func (s *Server) run(sess *session, o synthesis.Options) {
	o.OnEvent = s.recorder(sess)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if sess.dir != "" {
			s.endSession(sess, s.supervise(sess, o))
			return
		}
		s.endSession(sess, s.runGuarded(sess.ctx, sess.status.ID, o))
	}()
}

func (s *Server) endSession(sess *session, err error) {
	if errors.Is(err, errDetached) { // it runs on, for the next server to adopt
		sess.cancel(nil)
		sess.discardDraft()
		close(sess.done)
		return
	}
	s.mu.Lock()
	if err != nil {
		sess.status.State, sess.status.Error = "failed", err.Error()
		s.opts.Log.Printf("session %s failed: %v", sess.status.ID, err)
	} else {
		sess.status.State = "stopped"
	}
	sess.ended = time.Now()
	close(sess.changed)
	sess.changed = make(chan struct{})
	dirs := s.pruneLocked(sess.ended)
	s.mu.Unlock()
	removeDirs(dirs)
	sess.cancel(nil) // releases the context
	sess.discardDraft()
	close(sess.done)
}

func (s *Server) statusOf(sess *session) SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sess.status
	st.Timeline = append([]synthesis.Event{}, sess.status.Timeline...)
	return st
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *session {
	s.mu.Lock()
	sess := s.sessions[r.PathValue("id")]
	s.mu.Unlock()
	if sess != nil && sess.owner != ownerOf(r) {
		sess = nil // another token's session is not there, as far as this client can tell
	}
	if sess == nil {
		jsonError(w, http.StatusNotFound, fmt.Errorf("no session %q", r.PathValue("id")))
	}
	return sess
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	var out []SessionStatus
	for _, sess := range s.sessions {
		if sess.owner == ownerOf(r) {
			out = append(out, sess.status)
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	if sess := s.lookup(w, r); sess != nil {
		writeJSON(w, http.StatusOK, s.statusOf(sess))
	}
}

// sessionEvents streams the timeline as server-sent events: what happened so far, then each
// new event, then the final state.
func (s *Server) sessionEvents(w http.ResponseWriter, r *http.Request) {
	sess := s.lookup(w, r)
	if sess == nil {
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	// The stream lasts as long as the session: no read deadline (it would cancel the request
	// once it passed), and each write gets RequestTimeout, so only a client that stops
	// reading is cut off.
	rc.SetReadDeadline(time.Time{})
	sent := 0
	for {
		s.mu.Lock()
		events := append([]synthesis.Event{}, sess.status.Timeline[sent:]...)
		state, msg, changed := sess.status.State, sess.status.Error, sess.changed
		s.mu.Unlock()
		rc.SetWriteDeadline(time.Now().Add(s.opts.RequestTimeout))
		for _, e := range events {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: timeline\ndata: %s\n\n", b)
			sent++
		}
		if state != "running" {
			b, _ := json.Marshal(map[string]string{"state": state, "error": msg})
			fmt.Fprintf(w, "event: end\ndata: %s\n\n", b)
			rc.Flush()
			return
		}
		rc.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done(): // the server exits; the session may run on without it
			return
		case <-changed:
		}
	}
}

func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	sess := s.lookup(w, r)
	if sess == nil {
		return
	}
	sess.cancel(nil)
	select {
	case <-sess.done:
	case <-time.After(time.Minute):
		jsonError(w, http.StatusGatewayTimeout, errors.New("the session did not stop within a minute"))
		return
	}
	// Stopping a VM may take longer than the answer's deadline.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.opts.RequestTimeout))
	if sess.dir == "" { // a supervised session stays, stopped, until pruned with its directory
		s.mu.Lock()
		delete(s.sessions, sess.status.ID)
		s.mu.Unlock()
	}
	w.WriteHeader(http.StatusNoContent)
}
