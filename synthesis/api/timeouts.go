package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// readHeaderTimeout and idleTimeout bound a connection that sends no request.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// HTTPServer is an http.Server for the API, with its timeouts. There is no global
// ReadTimeout or WriteTimeout: they would cut an upload or an event stream that is making
// progress. Each request instead gets RequestTimeout for its body and its answer, and the
// streams extend their own deadlines as they go.
func (s *Server) HTTPServer() *http.Server {
	h := s.Handler()
	return &http.Server{
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          s.opts.Log,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Ended sessions are forgotten as requests come: no timer, no goroutine.
			s.mu.Lock()
			dirs := s.pruneLocked(time.Now())
			s.mu.Unlock()
			removeDirs(dirs)
			rc := http.NewResponseController(w)
			rc.SetReadDeadline(time.Now().Add(s.opts.RequestTimeout))
			rc.SetWriteDeadline(time.Now().Add(s.opts.RequestTimeout))
			h.ServeHTTP(w, r)
		}),
	}
}

// idleReader reads an upload body, giving the connection idle more time before each read
// (and the answer, which ends after the body, as long): an upload fails only when it stalls.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (ir idleReader) Read(p []byte) (int, error) {
	deadline := time.Now().Add(ir.idle)
	ir.rc.SetReadDeadline(deadline)
	ir.rc.SetWriteDeadline(deadline)
	n, err := ir.r.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("no upload data for %v: %w", ir.idle, err)
	}
	return n, err
}
