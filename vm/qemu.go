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

// qemuProcess is QEMU run as our own child (DriverQEMU): we own its monitor, its serial
// socket and its exit status.
type qemuProcess struct {
	*qmp
	cmd    *exec.Cmd
	runDir string
	stderr *tailBuffer
}

func startQEMU(ctx context.Context, v *VM, opts Options, incoming bool) error {
	qemuPath, err := lookQEMU(opts.QEMU)
	if err != nil {
		return err
	}
	runDir, err := makeRunDir()
	if err != nil {
		return err
	}
	qopts, conf, err := confine(opts, runDir)
	if err != nil {
		os.RemoveAll(runDir)
		return err
	}
	// QEMU holds its own copies of the passed files once it runs.
	defer conf.close()
	args := append(conf.args, buildArgs(qopts, v.accel, runDir, incoming)...)
	cmd, err := launcherCommand(qemuPath, args, opts)
	if err != nil {
		os.RemoveAll(runDir)
		return err
	}
	cmd.ExtraFiles = conf.files
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	// Own process group: a terminal's Ctrl-C reaches us, and we stop QEMU in order.
	// Pdeathsig: if we die without cleaning up, the kernel kills QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if opts.Network == NetworkInternet {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET // see NetworkInternet
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(runDir)
		return fmt.Errorf("start %s: %w", qemuPath, err)
	}
	var out *egress
	if opts.Network == NetworkInternet {
		if out, err = startEgress(ctx, cmd.Process.Pid, runDir, opts.Forwards); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			os.RemoveAll(runDir)
			return err
		}
	}
	p := &qemuProcess{cmd: cmd, runDir: runDir, stderr: stderr}
	v.proc = p
	go func() {
		err := cmd.Wait()
		if out != nil {
			out.close()
		}
		if msg := stderr.String(); msg != "" && err != nil {
			err = fmt.Errorf("qemu exited (%w): %s", err, msg)
		} else if err != nil {
			err = fmt.Errorf("qemu exited: %w", err)
		}
		v.exit(err)
	}()

	if err := p.connect(ctx, v, opts.SerialLog); err != nil {
		msg := stderr.String()
		p.kill()
		<-v.exited
		os.RemoveAll(runDir)
		if msg != "" {
			return fmt.Errorf("start qemu: %w; qemu said: %s", err, msg)
		}
		return fmt.Errorf("start qemu: %w", err)
	}
	return nil
}

// launcherCommand runs QEMU through our launcher (see LauncherMain) when its RAM advice is to
// be filtered or it is to run as another user, and directly otherwise.
func launcherCommand(qemuPath string, args []string, opts Options) (*exec.Cmd, error) {
	var env []string
	if !opts.KeepHugepageAdvice {
		env = append(env, launcherEnv+"="+strconv.FormatInt(opts.Config.MemoryBytes, 10))
	}
	if opts.RunAs.switches() {
		env = append(env, runAsEnv+"="+opts.RunAs.env())
	}
	if env == nil {
		return exec.Command(qemuPath, args...), nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("qemu launcher: %w", err)
	}
	cmd := exec.Command(self, append([]string{qemuPath}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd, nil
}

func lookQEMU(qemu string) (string, error) {
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(qemu)
	if err != nil {
		return "", fmt.Errorf("%s not found: install QEMU 7.2 or later (make deps): %w", qemu, err)
	}
	return path, nil
}

// connect waits for QEMU's monitor socket and attaches the serial console. QEMU creates both
// sockets before it parses the rest of its setup, so a start failure shows up as an exit here.
func (p *qemuProcess) connect(ctx context.Context, v *VM, serialLog io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		q, err := dialQMP(ctx, filepath.Join(p.runDir, "qmp.sock"))
		if err == nil {
			p.qmp = q
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
	c, err := dialSerial(ctx, filepath.Join(p.runDir, "serial.sock"))
	if err != nil {
		p.qmp.Close()
		return err
	}
	v.console = newConsole(c, serialLog)
	return nil
}

func dialSerial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("serial console: %w", err)
	}
	return c, nil
}

func (p *qemuProcess) cont(ctx context.Context) error  { return p.Execute(ctx, "cont", nil, nil) }
func (p *qemuProcess) pause(ctx context.Context) error { return p.Execute(ctx, "stop", nil, nil) }
func (p *qemuProcess) quit(ctx context.Context) error  { return p.Execute(ctx, "quit", nil, nil) }
func (p *qemuProcess) kill()                           { p.cmd.Process.Signal(syscall.SIGKILL) }
func (p *qemuProcess) lastWords() string               { return p.stderr.String() }
func (p *qemuProcess) pid() int                        { return p.cmd.Process.Pid }
func (p *qemuProcess) String() string                  { return fmt.Sprintf("QEMU pid %d", p.pid()) }

func (p *qemuProcess) release() {
	p.qmp.Close()
	os.RemoveAll(p.runDir)
}

// buildArgs is the whole QEMU command line. Everything that shapes guest-visible state comes
// from Config and the fixed device model, so a boot and a later resume match.
func buildArgs(opts Options, accel Accel, runDir string, incoming bool) []string {
	args := vmArgs(opts, accel,
		"socket,id=serial0,path="+filepath.Join(runDir, "serial.sock")+",server=on,wait=off",
		"socket,id=qmp,path="+filepath.Join(runDir, "qmp.sock")+",server=on,wait=off")
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

// vmArgs is the VM itself: machine, CPUs, RAM, boot files and devices, with the serial port
// and the QMP monitor on the chardevs serial (id serial0) and monitor (id qmp), given as
// -chardev values. The driver's command line and a stock resume (StockResume) both start
// from it, so they cannot drift apart.
func vmArgs(opts Options, accel Accel, serial, monitor string) []string {
	c := opts.Config
	args := []string{
		"-nodefaults", "-no-user-config",
		"-sandbox", sandboxArg,
		"-machine", c.Machine,
		"-accel", string(accel),
		"-cpu", c.CPU,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.FormatInt(c.MemoryBytes>>20, 10) + "M",
	}
	if opts.Kernel != "" {
		args = append(args, "-kernel", opts.Kernel, "-append", c.Append)
		if opts.Initrd != "" {
			args = append(args, "-initrd", opts.Initrd)
		}
	}
	args = append(args, guestArgs(opts)...)
	return append(args,
		"-chardev", serial,
		"-device", "isa-serial,chardev=serial0",
		"-chardev", monitor,
		"-mon", "chardev=qmp,mode=control",
	)
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

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
