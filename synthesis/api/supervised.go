package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
)

// errDetached ends a session's follower when the server exits and leaves the session running.
var errDetached = errors.New("the server left the session running")

// errSupervisorExited is the failure of a session whose supervisor died.
var errSupervisorExited = errors.New("supervisor exited")

// stopTimeout bounds how long a supervisor gets to stop its session (QEMU, mount).
const stopTimeout = time.Minute

// spoolPath is where the session's upload is received.
func (s *Server) spoolPath(sess *session) string {
	if sess.dir != "" {
		return sess.dir.Spool()
	}
	return sess.draft.Path("upload.overlay")
}

// createDir, with supervisors, makes the session's directory and writes its request there.
func (s *Server) createDir(sess *session, req SessionRequest, o synthesis.Options) error {
	if s.opts.Sessions == "" {
		return nil
	}
	sr := supervisor.Request{Base: o.Base.ID, Owner: string(req.owner), URL: req.URL, UploadSize: req.uploadSize,
		UploadIdle: s.opts.UploadIdle, Forwards: o.VM.Forwards, Addresses: sess.status.Forwards, EarlyStart: o.EarlyStart,
		Bandwidth: o.Fetch.BytesPerSecond, MaxOverlay: s.opts.MaxOverlay, AllowOrigins: s.opts.AllowOrigins,
		Registry: supervisor.RegistryOptions{PlainHTTP: s.opts.HTTP.OCI.Registry.PlainHTTP, DockerConfig: s.opts.HTTP.OCI.Registry.DockerConfig},
		VM:       supervisor.VMOptions{Accel: o.VM.Accel, Driver: o.VM.Driver, Libvirt: o.VM.Libvirt, Network: o.VM.Network, RunAs: o.VM.RunAs}}
	if o.Probe != nil {
		sr.Probe = o.Probe.String()
	}
	if c := s.opts.Chunks; c != nil {
		sr.ChunkStore, sr.ChunkStoreBytes = c.Dir(), c.MaxBytes()
	}
	dir := supervisor.Dir(filepath.Join(s.opts.Sessions, sess.status.ID))
	if err := supervisor.Create(dir, sr); err != nil {
		return err
	}
	sess.dir = dir
	return nil
}

// supervise starts the session's supervisor and follows it until the session ends. An upload
// (o.Origin) is received here, into the spool the supervisor reads; it is closed at the end.
func (s *Server) supervise(sess *session, o synthesis.Options) error {
	if o.Origin != nil {
		defer o.Origin.Close()
	}
	cmd, err := s.opts.StartSupervisor(sess.dir)
	if err != nil {
		return s.bury(sess.dir, fmt.Errorf("session %s: start supervisor: %w", sess.status.ID, err))
	}
	c := supervisor.NewClient(sess.dir)
	defer c.Close()
	if err := c.WaitAlive(sess.ctx, func() bool { return exited(cmd) }); err != nil {
		cmd.Process.Signal(syscall.SIGTERM) // if it still runs: it stops its session
		waitSupervisor(cmd)
		if st, ok := recordedEnd(sess.dir, 0, o.OnEvent); ok { // it ran, and ended before it answered
			return stateErr(st)
		}
		s.opts.Log.Printf("%v: its log is %s", err, sess.dir.Log())
		return s.bury(sess.dir, err)
	}
	return s.follow(sess, c, 0, o.OnEvent, cmd)
}

// supervisorExitGrace is how long a supervisor of ours gets to exit once its session ended or
// it was told to stop (it answers its last streams for a few seconds first).
const supervisorExitGrace = 30 * time.Second

// waitSupervisor waits for a supervisor that this server started. One still there after
// supervisorExitGrace is killed with its process group, QEMU included: a hung supervisor must
// not hold its session's slot for ever.
func waitSupervisor(cmd *exec.Cmd) {
	done := make(chan struct{})
	go func() { // waited for below, on every path
		cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(supervisorExitGrace):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // it leads its own process group (setsid)
		<-done
	}
}

// exited reports whether the supervisor process is gone (a zombie counts as gone).
func exited(cmd *exec.Cmd) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// followResult is how a supervisor's event stream ended: with the session's end, or broken.
type followResult struct {
	st  supervisor.State
	err error
}

// follow streams the session's events from the from-th on until it ends. When the session's
// context ends, the server either stops the session (a DELETE, a failed upload, or
// StopOnExit) or, when it exits, leaves it running. cmd, if not nil, is the supervisor as this
// server's child, waited for once it is gone.
func (s *Server) follow(sess *session, c *supervisor.Client, from int, onEvent func(synthesis.Event), cmd *exec.Cmd) error {
	// The stream outlives the session's context: the end comes through it.
	ctx, cancel := context.WithCancel(context.WithoutCancel(sess.ctx))
	defer cancel()
	done := make(chan followResult, 1)
	seen := from
	go func() { // waited for through done, on every path
		st, err := c.Follow(ctx, from, func(e synthesis.Event) {
			seen++
			onEvent(e)
		})
		done <- followResult{st, err}
	}()
	var r followResult
	select {
	case r = <-done:
	case <-sess.ctx.Done():
		if s.ctx.Err() != nil && !s.opts.StopOnExit {
			cancel()
			<-done
			if cmd != nil {
				cmd.Process.Release()
			}
			return errDetached
		}
		r = s.stop(sess, c, done, cancel)
	}
	if cmd != nil {
		waitSupervisor(cmd)
	}
	if r.err == nil {
		return stateErr(r.st)
	}
	if st, ok := recordedEnd(sess.dir, seen, onEvent); ok { // it ended between two answers
		return stateErr(st)
	}
	return s.bury(sess.dir, fmt.Errorf("session %s: %w", sess.status.ID, errSupervisorExited))
}

// recordedEnd is the end a gone supervisor recorded, if it did, after the events from the
// seen-th on that it recorded too.
func recordedEnd(dir supervisor.Dir, seen int, onEvent func(synthesis.Event)) (supervisor.State, bool) {
	st, _, ok, err := dir.ReadState()
	if err != nil || !ok {
		return st, false
	}
	if timeline, err := dir.ReadTimeline(); err == nil && seen < len(timeline) {
		for _, e := range timeline[seen:] {
			onEvent(e)
		}
	}
	return st, true
}

// stateErr is a session's end as an error: nil if it stopped.
func stateErr(st supervisor.State) error {
	if st.State == "failed" {
		return errors.New(st.Error)
	}
	return nil
}

// stop asks the supervisor to stop the session, with the reason its context was cancelled
// for if any, and waits for the stream's end.
func (s *Server) stop(sess *session, c *supervisor.Client, done <-chan followResult, cancel context.CancelFunc) followResult {
	why := ""
	if cause := context.Cause(sess.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		why = cause.Error()
	}
	ctx, cancelStop := context.WithTimeout(context.WithoutCancel(sess.ctx), stopTimeout)
	defer cancelStop()
	if err := c.Stop(ctx, why); err != nil {
		s.opts.Log.Printf("session %s: %v", sess.status.ID, err)
	}
	select {
	case r := <-done:
		return r
	case <-ctx.Done():
		cancel()
		return <-done
	}
}

// bury records a session whose supervisor is gone as failed, and clears what it left: a dead
// FUSE mount. It returns err.
func (s *Server) bury(dir supervisor.Dir, err error) error {
	for _, mp := range dir.MountPoints() {
		if _, cerr := cloudletfs.ClearStale(mp); cerr != nil {
			s.opts.Log.Printf("session %s: %v", dir.ID(), cerr)
		}
		if mp != dir.Mount() {
			os.Remove(mp) // the empty mount point the supervisor made in the run directory
		}
	}
	if werr := dir.WriteState(supervisor.State{State: "failed", Error: err.Error()}); werr != nil {
		s.opts.Log.Printf("session %s: %v", dir.ID(), werr)
	}
	return err
}
