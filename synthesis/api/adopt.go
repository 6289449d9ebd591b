package api

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
)

// adopt takes over the sessions in the sessions directory that an earlier server left: a live
// supervisor's session runs on, followed from where its timeline file ends; one whose
// supervisor is gone without recording an end failed; ended ones stay visible until pruned.
func (s *Server) adopt() {
	entries, err := os.ReadDir(s.opts.Sessions)
	if err != nil && !os.IsNotExist(err) {
		s.opts.Log.Printf("sessions: %v", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := supervisor.Dir(filepath.Join(s.opts.Sessions, e.Name()))
		if err := s.adoptOne(dir); err != nil {
			s.opts.Log.Printf("adopt %v", err)
		}
	}
}

// adoptOne takes over the session in dir.
func (s *Server) adoptOne(dir supervisor.Dir) error {
	req, err := dir.ReadRequest()
	if err != nil {
		return err
	}
	timeline, err := dir.ReadTimeline()
	if err != nil {
		return err
	}
	sess := &session{owner: owner(req.Owner), dir: dir, done: make(chan struct{}), changed: make(chan struct{}),
		status: SessionStatus{ID: dir.ID(), Base: req.Base, State: "running", Forwards: req.Addresses, Timeline: timeline}}
	sess.ctx, sess.cancel = context.WithCancelCause(s.ctx)
	st, ended, ok, err := dir.ReadState()
	if err != nil {
		return err
	}
	c := supervisor.NewClient(dir)
	if !ok && !c.Alive(s.ctx) {
		c.Close()
		st = supervisor.State{State: "failed", Error: s.bury(dir, errSupervisorExited).Error()}
		ended, ok = time.Now(), true
	}
	if ok {
		c.Close()
		s.addEnded(sess, st, ended)
		return nil
	}
	s.mu.Lock()
	s.sessions[sess.status.ID] = sess
	s.mu.Unlock()
	s.opts.Log.Printf("session %s: adopted, running", sess.status.ID)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer c.Close()
		s.endSession(sess, s.follow(sess, c, len(timeline), s.recorder(sess), nil))
	}()
	return nil
}

// addEnded shows a session that ended before this server started, until it is pruned.
func (s *Server) addEnded(sess *session, st supervisor.State, ended time.Time) {
	sess.status.State, sess.status.Error, sess.ended = st.State, st.Error, ended
	sess.cancel(nil)
	close(sess.done)
	s.mu.Lock()
	s.sessions[sess.status.ID] = sess
	dirs := s.pruneLocked(time.Now())
	s.mu.Unlock()
	removeDirs(dirs)
}

// recorder adds the session's events to its status, and wakes its event streams.
func (s *Server) recorder(sess *session) func(synthesis.Event) {
	return func(e synthesis.Event) {
		s.mu.Lock()
		sess.status.Timeline = append(sess.status.Timeline, e)
		close(sess.changed)
		sess.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// discardDraft removes the session's scratch directory; an adopted session has none.
func (sess *session) discardDraft() {
	if sess.draft != nil {
		sess.draft.Discard()
	}
}
