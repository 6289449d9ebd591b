package synthesis

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

// vmStart is QEMU starting in the background, on the mounted images, before the device state
// is in: the process, its machine and its monitor are most of a resume's time.
type vmStart struct {
	done    chan struct{}
	release context.CancelFunc // ends the VM's context, and so QEMU
	// Set before done is closed.
	v    *vm.VM
	err  error
	took time.Duration
}

// startQEMU starts QEMU once the host check has passed, and registers its end.
func (s *runner) startQEMU(ctx context.Context, check *hostCheck) *vmStart {
	opts := s.o.VM
	bo := s.o.Base.VMOptions()
	opts.Config, opts.Kernel, opts.Initrd = bo.Config, bo.Kernel, bo.Initrd
	opts.Disk = vm.Disk{Path: filepath.Join(s.mnt.Dir, "disk/image")}
	opts.Memory = vm.Memory{Path: filepath.Join(s.mnt.Dir, "memory/image"), Share: false}
	opts.ServedByCaller = true
	vmCtx, cancel := context.WithCancel(ctx)
	st := &vmStart{done: make(chan struct{}), release: cancel}
	go func() {
		defer close(st.done)
		if st.err = check.wait(); st.err != nil {
			return
		}
		start := time.Now()
		st.v, st.err = vm.StartIncoming(vmCtx, opts)
		st.took = time.Since(start)
	}()
	s.onClose(st.stop)
	return st
}

// wait returns the started VM, or why it did not start.
func (st *vmStart) wait(ctx context.Context) (*vm.VM, error) {
	select {
	case <-st.done:
		return st.v, st.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop ends QEMU, started or starting, and waits for it: no VM outlives its session.
func (st *vmStart) stop() {
	st.release() // kills QEMU, unless the session stopped it already
	<-st.done
	if st.v != nil {
		<-st.v.Done()
		st.v.Stop(context.Background()) // releases what QEMU held
	}
}

// resume loads the overlay's device state into the started QEMU and runs the guest.
func (s *runner) resume(ctx context.Context, st *vmStart) error {
	v, err := st.wait(ctx)
	if err != nil {
		return err
	}
	if err := resumeUnlessFailed(ctx, v, s.devPath, s.fetcher, st.release); err != nil {
		return err
	}
	s.vm = v
	s.onClose(func() { v.Stop(context.WithoutCancel(ctx)) })
	s.emit("resumed", fmt.Sprintf("%s, %s; QEMU started in %.3fs beside the index", v, v.Accel(), st.took.Seconds()))
	return nil
}

// resumeUnlessFailed resumes the VM, and gives up, stopping QEMU with stop, if the fetch fails
// meanwhile: the resume may wait in a read of a chunk that will never come, and QEMU's monitor
// with it.
func resumeUnlessFailed(ctx context.Context, v *vm.VM, devPath string, f *Fetcher, stop context.CancelFunc) error {
	resumed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-f.Failed():
			stop()
		case <-resumed:
		}
	}()
	err := v.ResumeFrom(ctx, devPath)
	close(resumed)
	wg.Wait()
	if err != nil {
		if f.Err() != nil {
			return fmt.Errorf("fetch overlay: %w; the VM was stopped while it resumed", f.Err())
		}
		return err
	}
	return nil
}

// loopState is what the event loop has seen so far.
type loopState struct {
	complete, answered bool
	completeCh         <-chan struct{} // nil once complete
	traceTimer         <-chan time.Time
}

// loop runs the VM until ctx ends, the VM stops, the fetch fails, or (with ExitWhenComplete)
// the probe has answered and the overlay is complete.
func (s *runner) loop(ctx context.Context) error {
	answers, stopProbe := s.startProbe(ctx, s.vm.Console())
	defer stopProbe()
	st := loopState{complete: !s.o.EarlyStart, answered: s.o.Probe == nil}
	if !st.complete {
		st.completeCh = s.fetcher.Complete()
	}
	for {
		if s.o.ExitWhenComplete && st.complete && st.answered {
			return nil
		}
		select {
		case <-st.completeCh:
			st.complete, st.completeCh = true, nil
			s.emit("complete", "")
		case err := <-answers:
			if err := s.onAnswer(&st, err); err != nil {
				return err
			}
		case <-st.traceTimer:
			st.traceTimer = nil
			s.o.OnTrace(s.fsys.Trace())
		case <-s.fetcher.Failed():
			return haltOnFailure(ctx, s.vm, s.fetcher.Err())
		case <-s.vm.Done():
			return s.vmEnded()
		case <-ctx.Done():
			return nil
		}
	}
}

// startProbe waits, in the background, for the VM's first answer to the probe, if there is
// one (a serial probe watches console). stop ends the wait and waits for it: no probe
// outlives its session, whichever way the session ends.
func (s *runner) startProbe(ctx context.Context, console probe.Text) (answers <-chan error, stop func()) {
	if s.o.Probe == nil {
		return nil, func() {}
	}
	ch := make(chan error, 1)
	pctx, cancel := context.WithTimeout(ctx, s.o.ProbeTimeout)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ch <- s.o.Probe.Wait(pctx, console)
	}()
	return ch, func() {
		cancel()
		wg.Wait()
	}
}

// onAnswer records the probe's first answer and, when profiling, starts the trace's tail.
func (s *runner) onAnswer(st *loopState, err error) error {
	if err != nil {
		return fmt.Errorf("no answer from the VM: %w", err)
	}
	st.answered = true
	s.emit("first_answer", s.o.Probe.String())
	if s.o.OnTrace != nil {
		st.traceTimer = time.After(s.o.ProfileTail)
	}
	return nil
}

// vmEnded says how the VM's end ends the session: stopped on purpose outside cloudlet is an
// event, a crash is an error.
func (s *runner) vmEnded() error {
	err := s.vm.Err()
	if errors.Is(err, vm.ErrStoppedOutside) {
		s.emit("stopped", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("the VM stopped: %w", err)
	}
	return nil
}

// pauseTimeout bounds pausing a VM after a failed fetch: a vCPU blocked in a fault on a chunk
// that will never come cannot pause.
const pauseTimeout = 5 * time.Second

// haltOnFailure pauses the VM after a failed fetch, so that it never runs on, and says so. If
// it cannot be paused, it is stopped.
func haltOnFailure(ctx context.Context, v *vm.VM, cause error) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pauseTimeout)
	defer cancel()
	if err := v.Pause(pctx); err != nil {
		v.Kill()
		return fmt.Errorf("fetch overlay: %w; the VM was stopped: it could not be paused while it waited for chunks that will not come", cause)
	}
	return fmt.Errorf("fetch overlay: %w; the VM was paused", cause)
}
