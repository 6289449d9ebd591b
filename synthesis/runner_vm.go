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

// resume starts QEMU on the mounted images, with the base's VM and the overlay's device state.
func (s *runner) resume(ctx context.Context) error {
	opts := s.o.VM
	bo := s.o.Base.VMOptions()
	opts.Config, opts.Kernel, opts.Initrd = bo.Config, bo.Kernel, bo.Initrd
	opts.Disk = vm.Disk{Path: filepath.Join(s.mnt.Dir, "disk/image")}
	opts.Memory = vm.Memory{Path: filepath.Join(s.mnt.Dir, "memory/image"), Share: false}
	opts.ServedByCaller = true
	v, release, err := resumeUnlessFailed(ctx, opts, s.devPath, s.fetcher)
	if err != nil {
		return err
	}
	s.vm = v
	s.onClose(release)
	s.onClose(func() { v.Stop(context.WithoutCancel(ctx)) })
	s.emit("resumed", fmt.Sprintf("%s, %s", v, v.Accel()))
	return nil
}

// resumeUnlessFailed resumes the VM, and gives up, stopping QEMU, if the fetch fails meanwhile:
// the resume may wait in a read of a chunk that will never come, and QEMU's monitor with it.
// The VM lives until ctx ends or release is called.
func resumeUnlessFailed(ctx context.Context, opts vm.Options, devPath string, f *Fetcher) (*vm.VM, context.CancelFunc, error) {
	vmCtx, cancel := context.WithCancel(ctx)
	resumed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-f.Failed():
			cancel()
		case <-resumed:
		}
	}()
	v, err := vm.Resume(vmCtx, opts, devPath)
	close(resumed)
	wg.Wait()
	if err != nil {
		cancel()
		if f.Err() != nil {
			return nil, nil, fmt.Errorf("fetch overlay: %w; the VM was stopped while it resumed", f.Err())
		}
		return nil, nil, err
	}
	return v, cancel, nil
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
