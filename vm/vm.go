package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Disk is the VM's one block device.
type Disk struct {
	Path   string
	Format string // "raw" (default) or "qcow2"
}

// Memory is the file that backs guest RAM (memory-backend-file).
type Memory struct {
	Path string
	// Share maps the file MAP_SHARED, so guest writes reach it (needed to snapshot). Without
	// it the mapping is private: the file is only read, and guest writes stay in QEMU.
	Share bool
}

// Driver names who starts QEMU.
type Driver string

const (
	// DriverQEMU runs QEMU as a child of this process.
	DriverQEMU Driver = "qemu"
	// DriverLibvirt asks a libvirt daemon to run QEMU as a transient domain, so operators
	// see and manage it with virsh.
	DriverLibvirt Driver = "libvirt"
)

// ParseDriver reads the --driver flag.
func ParseDriver(s string) (Driver, error) {
	switch Driver(s) {
	case "", DriverQEMU:
		return DriverQEMU, nil
	case DriverLibvirt:
		return DriverLibvirt, nil
	}
	return "", fmt.Errorf("driver %q: want qemu or libvirt", s)
}

// ErrLibvirtNotBuilt is the libvirt driver's answer in a binary built without it.
var ErrLibvirtNotBuilt = errors.New("this cloudlet was built without libvirt support " +
	"(CGO_ENABLED=0 or -tags nolibvirt); rebuild it with cgo and libvirt-dev installed (make deps build)")

// ErrStoppedOutside is in a VM's exit error when someone stopped it on purpose outside
// cloudlet, as an operator's 'virsh destroy' does: an end, not a failure.
var ErrStoppedOutside = errors.New("stopped outside cloudlet")

// Libvirt is where and how the libvirt driver runs a domain.
type Libvirt struct {
	URI string // e.g. qemu:///system; empty means libvirt's default
	// LogDir is where the daemon writes each domain's QEMU log (NAME.log), read to quote QEMU's
	// last words in errors. Empty means /var/log/libvirt/qemu, a system daemon's place.
	LogDir string
}

// Options is one run of a VM: the snapshot-stable Config plus the per-run details.
type Options struct {
	Config   Config
	Kernel   string // optional; without it the firmware boots the disk
	Initrd   string
	Disk     Disk
	Memory   Memory
	Forwards []Forward
	VNC      string // QEMU -vnc argument, e.g. "127.0.0.1:1"; empty means no display
	Accel    Accel
	// KeepHugepageAdvice runs QEMU directly, without the launcher's seccomp filter, for
	// benchmarks that compare both.
	KeepHugepageAdvice bool
	// ServedByCaller says the disk and memory paths are on a FUSE mount that this process
	// serves. The driver then never touches them itself (the serving process must not open
	// its own mount): no existence check, and no sync after a snapshot, which the caller does
	// through its store (QEMU's exit has written back its dirty pages by then).
	ServedByCaller bool
	QEMU           string    // binary; default qemu-system-x86_64 from PATH
	Log            io.Writer // driver notes such as the accelerator choice; nil discards
	SerialLog      io.Writer // a copy of everything the guest prints on its serial port

	Driver  Driver // default DriverQEMU
	Libvirt Libvirt
	// Name tells this VM apart for operators: the libvirt domain is "cloudlet-NAME". Empty
	// means a random name.
	Name string
	// Network is what the guest may reach besides the forwards into it: nothing (the default),
	// or the internet, never the host's loopback.
	Network Network
	// RunAs, if set, is the unprivileged user QEMU runs as (the launcher drops to it before
	// exec). Nil runs QEMU as this process's user. With the QEMU driver, the kernel and initrd
	// are copied for that user, the disk is passed as open files, and the memory file must be
	// the user's (see User.Lend) or, with ServedByCaller, exposed to it by the caller. The
	// libvirt driver gives the domain a static DAC label for the user when ServedByCaller;
	// for other images QEMU runs as root there (see confineDomain).
	RunAs *User
	// Host is what this host's QEMU can run, asked once and kept; a resume checks the snapshot
	// against it before QEMU starts. Nil asks QEMU afresh for each resume.
	Host *Host
}

// User is an unprivileged account for QEMU: a guest that escapes QEMU gets only its rights.
type User struct {
	Name     string
	UID, GID int
	Groups   []int // supplementary groups, such as the one that may open /dev/kvm
}

// startTimeout bounds how long QEMU may take to open its monitor.
const startTimeout = 30 * time.Second

// stopGrace is how long a VM gets to quit before it is killed.
const stopGrace = 5 * time.Second

// VM is a running QEMU, whichever driver started it. Its life is bound to the context given to
// Boot or Resume: cancelling it ends QEMU, so no VM outlives its owner.
type VM struct {
	accel   Accel
	memory  string // paths of the RAM file and the disk, synced after a snapshot
	disk    string
	noSync  bool
	proc    process
	console *Console
	exited  chan struct{} // closed when QEMU is gone
	waitErr error         // set before exited is closed

	stopOnce    sync.Once
	stopContext func() bool
}

// process is QEMU as one driver runs it.
type process interface {
	monitor
	// cont runs the guest CPUs, and pause stops them, so that whoever manages QEMU knows.
	cont(ctx context.Context) error
	pause(ctx context.Context) error
	// quit asks QEMU to exit; kill makes it. Neither waits.
	quit(ctx context.Context) error
	kill()
	// lastWords is the tail of QEMU's stderr, for error messages.
	lastWords() string
	// release frees what the driver holds once QEMU is gone.
	release()
	pid() int
	String() string
}

// monitor is QEMU's QMP monitor.
type monitor interface {
	Execute(ctx context.Context, cmd string, args, out any) error
	// SendFD passes an open file to QEMU under name, for fd: migration URIs. Passing the fd
	// keeps the shell out of migration (no exec: URIs) and works where a sandbox forbids
	// spawning.
	SendFD(ctx context.Context, name string, f *os.File) error
}

// Boot starts a VM from its disk (and kernel, if given).
func Boot(ctx context.Context, opts Options) (*VM, error) {
	v, err := start(ctx, opts, false)
	if err != nil {
		return nil, err
	}
	if err := v.proc.cont(ctx); err != nil {
		return nil, v.failed("boot", err)
	}
	return v, nil
}

// Resume starts a VM from a device-state snapshot whose RAM is already in opts.Memory.Path.
// The guest runs when Resume returns.
func Resume(ctx context.Context, opts Options, devstate string) (*VM, error) {
	v, err := StartIncoming(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := v.ResumeFrom(ctx, devstate); err != nil {
		return nil, err
	}
	return v, nil
}

// StartIncoming starts QEMU on opts's images, waiting for a device state (ResumeFrom). Starting
// it is most of a resume's time (the process, its machine, its monitor), and needs only the
// images' paths, not their bytes: a caller that gets the device state later starts QEMU first.
// The VM lives until ctx ends or it is stopped.
func StartIncoming(ctx context.Context, opts Options) (*VM, error) {
	return start(ctx, opts, true)
}

// ResumeFrom loads the device state at path into a VM from StartIncoming and runs the guest.
// On failure QEMU is gone.
func (v *VM) ResumeFrom(ctx context.Context, devstate string) error {
	f, err := os.Open(devstate)
	if err != nil {
		v.Kill()
		return fmt.Errorf("resume: device state: %w", err)
	}
	defer f.Close()
	steps := []func() error{
		func() error { return v.setIgnoreShared(ctx) },
		func() error { return v.proc.SendFD(ctx, "devstate", f) },
		func() error {
			return v.proc.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:devstate"}, nil)
		},
		func() error { return waitMigration(ctx, v.proc) },
		func() error { return v.proc.cont(ctx) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return v.failed("resume from "+devstate, err)
		}
	}
	return nil
}

// Snapshot pauses the guest, writes its device state to path and shuts QEMU down. RAM is not
// in the stream (x-ignore-shared): it stays in the memory file, which Snapshot makes durable,
// as it does the disk.
func (v *VM) Snapshot(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	steps := []func() error{
		func() error { return v.proc.pause(ctx) },
		func() error { return v.setIgnoreShared(ctx) },
		func() error { return v.proc.SendFD(ctx, "snapshot", f) },
		func() error { return v.proc.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}, nil) },
		func() error { return waitMigration(ctx, v.proc) },
		func() error { return f.Sync() },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return v.failed("snapshot to "+path, err)
		}
	}
	if err := v.Stop(ctx); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if v.noSync {
		return nil
	}
	// QEMU never msyncs a shared RAM file, and its disk cache is writeback.
	for _, p := range []string{v.memory, v.disk} {
		if err := syncFile(p); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	return nil
}

func (v *VM) setIgnoreShared(ctx context.Context) error {
	return v.proc.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

// Pause stops the guest's CPUs; QEMU keeps running, so the state can be inspected or resumed.
func (v *VM) Pause(ctx context.Context) error { return v.proc.pause(ctx) }

// Console is the guest's serial port.
func (v *VM) Console() *Console { return v.console }

// Accel is the accelerator QEMU runs with.
func (v *VM) Accel() Accel { return v.accel }

// PID is QEMU's process ID, or 0 where the driver cannot tell (a remote libvirt daemon).
func (v *VM) PID() int { return v.proc.pid() }

// String names the VM for people: "QEMU pid 123" or "libvirt domain cloudlet-ab12".
func (v *VM) String() string { return v.proc.String() }

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.exited }

// Until returns a context that also ends when QEMU exits, with the reason as its cause, so a
// wait for the guest (a probe, a serial command) ends at once, and says why, if the VM dies.
func (v *VM) Until(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-v.exited:
			if v.waitErr != nil {
				cancel(fmt.Errorf("the VM stopped: %w", v.waitErr))
			} else {
				cancel(errors.New("the VM stopped: the guest shut down"))
			}
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// Err is why QEMU exited, with its last words; valid after Done.
func (v *VM) Err() error { return v.waitErr }

// Stop asks QEMU to quit and kills it if it has not after a grace period. It is safe to call
// more than once and after QEMU has exited.
func (v *VM) Stop(ctx context.Context) error {
	select {
	case <-v.exited:
	default:
		qctx, cancel := context.WithTimeout(ctx, stopGrace)
		// quit's reply can race the monitor closing; the exit below is what counts.
		_ = v.proc.quit(qctx)
		select {
		case <-v.exited:
		case <-qctx.Done():
			v.proc.kill()
			<-v.exited
		}
		cancel()
	}
	v.cleanup()
	return nil
}

// Kill ends QEMU at once.
func (v *VM) Kill() {
	v.proc.kill()
	<-v.exited
	v.cleanup()
}

func (v *VM) cleanup() {
	v.stopOnce.Do(func() {
		v.stopContext()
		if v.console != nil {
			v.console.Close()
		}
		v.proc.release()
	})
}

// exit records why QEMU ended; each driver calls it once, when it sees the end.
func (v *VM) exit(err error) {
	v.waitErr = err
	close(v.exited)
}

// failed turns an error during a QMP step into one that carries QEMU's own message, and makes
// sure the process is gone: a VM that failed to start or resume is never left running.
func (v *VM) failed(what string, err error) error {
	// QEMU exits on most failures (a bad migration stream, say); give it a moment to say why.
	// A QMP error answer means it is still alive and the answer is the message.
	var qerr *QMPError
	exited := false
	if !errors.As(err, &qerr) {
		select {
		case <-v.exited:
			exited = true
		case <-time.After(2 * time.Second):
		}
	}
	msg := v.proc.lastWords()
	v.Kill()
	switch {
	case exited && msg != "":
		// The monitor's broken connection says nothing that QEMU's last words do not.
		return fmt.Errorf("%s: qemu exited: %s", what, msg)
	case msg != "":
		return fmt.Errorf("%s: %w; qemu said: %s", what, err, msg)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// start checks what every driver needs, then has the driver start QEMU, paused.
func start(ctx context.Context, opts Options, incoming bool) (*VM, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	disk := opts.Disk.Path
	if opts.ServedByCaller {
		disk = ""
	}
	for _, f := range []struct{ what, path string }{
		{"disk", disk}, {"kernel", opts.Kernel}, {"initrd", opts.Initrd},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s: %w", f.what, err)
		}
	}
	if opts.Initrd != "" && opts.Kernel == "" {
		return nil, errors.New("an initrd needs a kernel")
	}
	for _, fw := range opts.Forwards {
		if err := fw.CheckFree(); err != nil {
			return nil, err
		}
	}
	if opts.Network == NetworkInternet && opts.Driver == DriverLibvirt {
		return nil, errors.New("guest internet (--guest-net internet) needs the QEMU driver, not libvirt")
	}
	accel, why := chooseAccel(opts.Accel, "/sys/module")
	logf(opts.Log, "accelerator: %s (%s)\n", accel, why)
	if incoming {
		if err := checkHost(ctx, opts, accel); err != nil {
			return nil, err
		}
	}

	v := &VM{accel: accel, memory: opts.Memory.Path, disk: opts.Disk.Path, noSync: opts.ServedByCaller, exited: make(chan struct{})}
	var err error
	switch opts.Driver {
	case "", DriverQEMU:
		err = startQEMU(ctx, v, opts, incoming)
	case DriverLibvirt:
		err = startLibvirt(ctx, v, opts, incoming)
	default:
		err = fmt.Errorf("driver %q: want qemu or libvirt", opts.Driver)
	}
	if err != nil {
		return nil, err
	}
	v.stopContext = context.AfterFunc(ctx, v.proc.kill)
	return v, nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

func logf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format, args...)
	}
}
