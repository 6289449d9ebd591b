package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
}

// startTimeout bounds how long QEMU may take to open its monitor.
const startTimeout = 30 * time.Second

// stopGrace is how long a VM gets to quit before it is killed.
const stopGrace = 5 * time.Second

// VM is a running QEMU process. Its life is bound to the context given to Boot or Resume:
// cancelling it kills QEMU, so no VM outlives its owner.
type VM struct {
	accel   Accel
	memory  string // paths of the RAM file and the disk, synced after a snapshot
	disk    string
	noSync  bool
	cmd     *exec.Cmd
	runDir  string
	qmp     *qmp
	console *Console
	stderr  *tailBuffer
	exited  chan struct{} // closed when the process has been reaped
	waitErr error         // set before exited is closed

	stopOnce    sync.Once
	stopContext func() bool
}

// Boot starts a VM from its disk (and kernel, if given).
func Boot(ctx context.Context, opts Options) (*VM, error) {
	v, err := start(ctx, opts, false)
	if err != nil {
		return nil, err
	}
	if err := v.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return nil, v.failed("boot", err)
	}
	return v, nil
}

// Resume starts a VM from a device-state snapshot whose RAM is already in opts.Memory.Path.
// The guest runs when Resume returns.
func Resume(ctx context.Context, opts Options, devstate string) (*VM, error) {
	f, err := os.Open(devstate)
	if err != nil {
		return nil, fmt.Errorf("resume: device state: %w", err)
	}
	defer f.Close()
	v, err := start(ctx, opts, true)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return v.setIgnoreShared(ctx) },
		func() error { return v.qmp.SendFD(ctx, "devstate", f) },
		func() error {
			return v.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:devstate"}, nil)
		},
		func() error { return v.qmp.waitMigration(ctx) },
		func() error { return v.qmp.Execute(ctx, "cont", nil, nil) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, v.failed("resume from "+devstate, err)
		}
	}
	return v, nil
}

// Snapshot pauses the guest, writes its device state to path and shuts QEMU down. RAM is not
// in the stream (x-ignore-shared): it stays in the memory file, which Snapshot makes durable,
// as it does the disk.
func (v *VM) Snapshot(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	steps := []func() error{
		func() error { return v.qmp.Execute(ctx, "stop", nil, nil) },
		func() error { return v.setIgnoreShared(ctx) },
		func() error { return v.qmp.SendFD(ctx, "snapshot", f) },
		func() error { return v.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}, nil) },
		func() error { return v.qmp.waitMigration(ctx) },
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
	return v.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

// Pause stops the guest's CPUs; QEMU keeps running, so the state can be inspected or resumed.
func (v *VM) Pause(ctx context.Context) error {
	return v.qmp.Execute(ctx, "stop", nil, nil)
}

// Console is the guest's serial port.
func (v *VM) Console() *Console { return v.console }

// Accel is the accelerator QEMU runs with.
func (v *VM) Accel() Accel { return v.accel }

// PID is QEMU's process ID.
func (v *VM) PID() int { return v.cmd.Process.Pid }

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
		_ = v.qmp.Execute(qctx, "quit", nil, nil)
		select {
		case <-v.exited:
		case <-qctx.Done():
			v.kill()
			<-v.exited
		}
		cancel()
	}
	v.cleanup()
	return nil
}

// Kill ends QEMU at once.
func (v *VM) Kill() {
	v.kill()
	<-v.exited
	v.cleanup()
}

func (v *VM) kill() { v.cmd.Process.Signal(syscall.SIGKILL) }

func (v *VM) cleanup() {
	v.stopOnce.Do(func() {
		v.stopContext()
		v.qmp.Close()
		v.console.Close()
		os.RemoveAll(v.runDir)
	})
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
	msg := v.stderr.String()
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

func start(ctx context.Context, opts Options, incoming bool) (*VM, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	qemu := opts.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	qemuPath, err := exec.LookPath(qemu)
	if err != nil {
		return nil, fmt.Errorf("%s not found: install QEMU 7.2 or later (make deps): %w", qemu, err)
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
	accel, why := chooseAccel(opts.Accel, "/sys/module")
	logf(opts.Log, "accelerator: %s (%s)\n", accel, why)

	runDir, err := os.MkdirTemp("", "cloudlet-vm-")
	if err != nil {
		return nil, fmt.Errorf("vm run directory: %w", err)
	}
	args := buildArgs(opts, accel, runDir, incoming)

	var cmd *exec.Cmd
	if opts.KeepHugepageAdvice {
		cmd = exec.Command(qemuPath, args...)
	} else {
		self, err := os.Executable()
		if err != nil {
			os.RemoveAll(runDir)
			return nil, fmt.Errorf("qemu launcher: %w", err)
		}
		cmd = exec.Command(self, append([]string{qemuPath}, args...)...)
		cmd.Env = append(os.Environ(), launcherEnv+"="+strconv.FormatInt(opts.Config.MemoryBytes, 10))
	}
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	// Own process group: a terminal's Ctrl-C reaches us, and we stop QEMU in order.
	// Pdeathsig: if we die without cleaning up, the kernel kills QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(runDir)
		return nil, fmt.Errorf("start %s: %w", qemuPath, err)
	}
	v := &VM{accel: accel, memory: opts.Memory.Path, disk: opts.Disk.Path, noSync: opts.ServedByCaller, cmd: cmd, runDir: runDir, stderr: stderr, exited: make(chan struct{})}
	v.stopContext = context.AfterFunc(ctx, v.kill)
	go func() {
		err := cmd.Wait()
		if msg := stderr.String(); msg != "" && err != nil {
			err = fmt.Errorf("qemu exited (%w): %s", err, msg)
		} else if err != nil {
			err = fmt.Errorf("qemu exited: %w", err)
		}
		v.waitErr = err
		close(v.exited)
	}()

	if err := v.connect(ctx, opts.SerialLog); err != nil {
		msg := stderr.String()
		v.kill()
		<-v.exited
		os.RemoveAll(runDir)
		v.stopContext()
		if msg != "" {
			return nil, fmt.Errorf("start qemu: %w; qemu said: %s", err, msg)
		}
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	return v, nil
}

// connect waits for QEMU's monitor socket and attaches the serial console. QEMU creates both
// sockets before it parses the rest of its setup, so a start failure shows up as an exit here.
func (v *VM) connect(ctx context.Context, serialLog io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		q, err := dialQMP(ctx, filepath.Join(v.runDir, "qmp.sock"))
		if err == nil {
			v.qmp = q
			break
		}
		select {
		case <-v.exited:
			return errors.New("qemu exited before its monitor was ready")
		case <-ctx.Done():
			return fmt.Errorf("qemu monitor not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(v.runDir, "serial.sock"))
	if err != nil {
		v.qmp.Close()
		return fmt.Errorf("serial console: %w", err)
	}
	v.console = newConsole(c, serialLog)
	return nil
}

// buildArgs is the whole QEMU command line. Everything that shapes guest-visible state comes
// from Config and the fixed device model, so a boot and a later resume match.
func buildArgs(opts Options, accel Accel, runDir string, incoming bool) []string {
	c := opts.Config
	mem := strconv.FormatInt(c.MemoryBytes>>20, 10) + "M"
	share := "off"
	if opts.Memory.Share {
		share = "on"
	}
	format := opts.Disk.Format
	if format == "" {
		format = "raw"
	}
	netdev := "user,id=net0"
	for _, f := range opts.Forwards {
		netdev += ",hostfwd=" + f.String()
	}
	args := []string{
		"-nodefaults", "-no-user-config",
		"-machine", c.Machine + ",memory-backend=mem",
		"-accel", string(accel),
		"-cpu", c.CPU,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", mem,
		"-object", "memory-backend-file,id=mem,size=" + mem + ",mem-path=" + qemuEscape(opts.Memory.Path) + ",share=" + share,
	}
	if opts.Kernel != "" {
		args = append(args, "-kernel", opts.Kernel, "-append", c.Append)
		if opts.Initrd != "" {
			args = append(args, "-initrd", opts.Initrd)
		}
	}
	args = append(args,
		"-drive", "file="+qemuEscape(opts.Disk.Path)+",format="+format+",if=none,id=disk0,cache=writeback",
		"-device", "virtio-blk-pci,drive=disk0",
		"-netdev", netdev,
		// romfile= skips the iPXE option ROM: it is never used and would be one more RAM block.
		"-device", "virtio-net-pci,netdev=net0,romfile=",
		"-chardev", "socket,id=serial0,path="+filepath.Join(runDir, "serial.sock")+",server=on,wait=off",
		"-serial", "chardev:serial0",
		"-vga", "std",
		"-chardev", "socket,id=qmp,path="+filepath.Join(runDir, "qmp.sock")+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)
	if opts.VNC != "" {
		args = append(args, "-vnc", opts.VNC)
	} else {
		args = append(args, "-display", "none")
	}
	if incoming {
		args = append(args, "-incoming", "defer")
	} else {
		// Start paused so the console is attached before the guest prints anything.
		args = append(args, "-S")
	}
	return args
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

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

// tailBuffer keeps the last max bytes written to it: QEMU's stderr, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}
