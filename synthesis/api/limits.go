package api

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Limits of the synthesis server. Clients are strangers: every resource a request can make
// the server hold is bounded by one of these.
const (
	// MaxForwards bounds the host ports one session may open: each is a listening socket
	// and a QEMU hostfwd rule.
	MaxForwards = 16
	// DefaultMaxOverlay matches the default upload limit: an overlay is the size of what
	// a user changed, far below a base.
	DefaultMaxOverlay = 8 << 30
	// DefaultUploadIdle is how long an upload may stall: longer than a slow link's hiccup,
	// short enough that a silent client cannot sit on a session slot.
	DefaultUploadIdle = 60 * time.Second
	// DefaultRequestTimeout bounds a request's body and its answer (not the streams, which
	// get it per progress).
	DefaultRequestTimeout = 30 * time.Second
	// DefaultPruneAfter keeps an ended session visible long enough for its client to read
	// why it ended.
	DefaultPruneAfter = 10 * time.Minute
	// maxEnded bounds the ended sessions kept for their clients, however fast they fail.
	maxEnded = 1000
)

var errBusy = errors.New("too many sessions")

// checkPorts refuses forwards a session may not have: too many, out of range, or twice.
func checkPorts(req SessionRequest) error {
	if len(req.Ports) > MaxForwards {
		return fmt.Errorf("%d ports asked: at most %d may be forwarded", len(req.Ports), MaxForwards)
	}
	seen := map[int]bool{}
	for _, p := range req.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d: want 1 to 65535", p)
		}
		if seen[p] {
			return fmt.Errorf("port %d asked twice", p)
		}
		seen[p] = true
	}
	if req.ProbePort != 0 && !seen[req.ProbePort] {
		return fmt.Errorf("probe port %d is not among the forwarded ports", req.ProbePort)
	}
	return nil
}

// reserve takes a session slot, or fails with errBusy. Counting and taking happen under one
// lock: concurrent creates cannot all see the last free slot.
func (s *Server) reserve() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	active := s.starting
	for _, x := range s.sessions {
		if x.status.State == "running" {
			active++
		}
	}
	if active >= s.opts.MaxSessions {
		return fmt.Errorf("%w: %d running, the limit is %d", errBusy, active, s.opts.MaxSessions)
	}
	s.starting++
	return nil
}

// unreserve gives back a slot taken by reserve; a session that is added holds it from then on.
func (s *Server) unreserve() {
	s.mu.Lock()
	s.starting--
	s.mu.Unlock()
}

// pruneLocked forgets ended sessions after PruneAfter, and the oldest ended ones beyond
// maxEnded. It returns their directories, for removeDirs once s.mu is released: a session's
// directory may hold gigabytes of cache, and every request would wait for its removal.
func (s *Server) pruneLocked(now time.Time) (dirs []string) {
	var oldest *session
	ended := 0
	for _, sess := range s.sessions {
		if sess.ended.IsZero() {
			continue
		}
		if now.Sub(sess.ended) >= s.opts.PruneAfter {
			dirs = s.forgetLocked(sess, dirs)
			continue
		}
		ended++
		if oldest == nil || sess.ended.Before(oldest.ended) {
			oldest = sess
		}
	}
	if ended > maxEnded {
		dirs = s.forgetLocked(oldest, dirs)
	}
	return dirs
}

// forgetLocked drops an ended session, adding its directory, if it has one, to dirs.
func (s *Server) forgetLocked(sess *session, dirs []string) []string {
	delete(s.sessions, sess.status.ID)
	if sess.dir != "" {
		dirs = append(dirs, string(sess.dir))
	}
	return dirs
}

// removeDirs removes forgotten sessions' directories.
func removeDirs(dirs []string) {
	for _, d := range dirs {
		os.RemoveAll(d)
	}
}
