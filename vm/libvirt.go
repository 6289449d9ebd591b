//go:build cgo && !nolibvirt

package vm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"
)

// LibvirtBuilt says whether this binary has the libvirt driver (built with cgo and without
// the nolibvirt tag).
const LibvirtBuilt = true

// defaultLibvirtLogDir is where a system libvirt daemon writes each domain's QEMU log.
const defaultLibvirtLogDir = "/var/log/libvirt/qemu"

// statePoll is how often the driver asks libvirt whether the domain still runs. Libvirt's
// event API would need a process-wide event loop; a poll is enough to end a session within a
// tenth of a second of a 'virsh destroy'.
const statePoll = 100 * time.Millisecond

// libvirtProcess is QEMU run by a libvirt daemon as a transient domain: libvirt owns the
// monitor, so QMP goes through its passthrough; the serial port is a socket we connect to.
type libvirtProcess struct {
	uri, name string
	logPath   string
	logFrom   int64 // the log's size when this domain started: earlier runs are not ours
	runDir    string
	qemuPID   int
	quitting  atomic.Bool // we asked the domain to stop: its end is no error
	killing   atomic.Bool

	mu   sync.Mutex // guards conn and dom, which a reconnect replaces
	conn *libvirt.Connect
	dom  *libvirt.Domain
}

func startLibvirt(ctx context.Context, v *VM, opts Options, incoming bool) error {
	qemuPath, err := lookQEMU(opts.QEMU)
	if err != nil {
		return err
	}
	name := opts.Name
	if name == "" {
		b := make([]byte, 4)
		rand.Read(b)
		name = hex.EncodeToString(b)
	}
	name = domainName(name)
	uri := opts.Libvirt.URI
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		return fmt.Errorf("libvirt: cannot reach a daemon at %s: %s (is libvirtd running, and is the URI right? see README, libvirt set-up)", uriName(uri), libvirtMessage(err))
	}
	fail := func(err error) error {
		conn.Close()
		return err
	}
	if d, err := conn.LookupDomainByName(name); err == nil {
		d.Free()
		return fail(fmt.Errorf("libvirt domain %s already exists on %s: stop it with 'virsh destroy %s', or pick another name", name, uriName(uri), name))
	}

	emulator := qemuPath
	env := map[string]string{}
	if !opts.KeepHugepageAdvice {
		if emulator, err = writeLauncher(qemuPath); err != nil {
			return fail(err)
		}
		env = ramEnv(opts.Config)
	}
	runDir, err := makeRunDir()
	if err != nil {
		return fail(err)
	}
	if opts, err = confineDomain(opts, runDir); err != nil {
		os.RemoveAll(runDir)
		return fail(err)
	}
	spec := domainSpec{name: name, accel: v.accel, emulator: emulator, runDir: runDir, incoming: incoming, env: env}
	doc, err := buildDomainXML(opts, spec)
	if err != nil {
		os.RemoveAll(runDir)
		return fail(err)
	}
	logDir := opts.Libvirt.LogDir
	if logDir == "" {
		logDir = defaultLibvirtLogDir
	}
	p := &libvirtProcess{uri: uri, name: name, runDir: runDir, conn: conn, logPath: filepath.Join(logDir, name+".log")}
	if st, err := os.Stat(p.logPath); err == nil {
		p.logFrom = st.Size()
	}
	logf(opts.Log, "libvirt: starting domain %s on %s\n", name, uriName(uri))
	// Paused, so the console is attached before the guest prints anything. Autodestroy: the
	// domain ends when our connection does, so no VM outlives this process, as with the QEMU
	// driver's Pdeathsig.
	dom, err := conn.DomainCreateXML(doc, libvirt.DOMAIN_START_PAUSED|libvirt.DOMAIN_START_AUTODESTROY)
	if err != nil {
		os.RemoveAll(runDir)
		msg := libvirtMessage(err)
		if words := p.lastWords(); words != "" && !strings.Contains(msg, words) {
			msg += "; qemu said: " + words
		}
		return fail(fmt.Errorf("libvirt: start domain %s: %s", name, msg))
	}
	p.dom = dom
	p.qemuPID = findQEMU(name)
	v.proc = p
	go p.watch(v)

	cctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	c, err := dialSerial(cctx, filepath.Join(runDir, "serial.sock"))
	if err != nil {
		p.kill()
		<-v.exited
		p.release()
		return fmt.Errorf("libvirt domain %s: %w", name, err)
	}
	v.console = newConsole(c, opts.SerialLog)
	return nil
}

// watch polls the domain until it is gone, then records why.
func (p *libvirtProcess) watch(v *VM) {
	tick := time.NewTicker(statePoll)
	defer tick.Stop()
	for range tick.C {
		p.mu.Lock()
		dom := p.dom
		p.mu.Unlock()
		state, reason, err := dom.GetState()
		switch {
		case err == nil && (state == libvirt.DOMAIN_SHUTOFF || state == libvirt.DOMAIN_CRASHED):
			v.exit(p.stopped(fmt.Sprintf("state %d, reason %d", state, reason)))
			return
		case err == nil:
			continue
		case isLibvirtError(err, libvirt.ERR_NO_DOMAIN):
			// A transient domain vanishes when it stops, taking its state along; libvirt's
			// log says why.
			v.exit(p.stopped(""))
			return
		default:
			p.reconnect() // the daemon restarted; the domain runs on without it
		}
	}
}

var shutdownReason = regexp.MustCompile(`shutting down, reason=(\w+)`)

// stopped is the exit error for a domain that is gone; nil when the guest shut down or we
// asked it to stop.
func (p *libvirtProcess) stopped(state string) error {
	reason := state
	if m := shutdownReason.FindAllStringSubmatch(p.log(), -1); m != nil {
		reason = m[len(m)-1][1]
	}
	switch {
	case p.quitting.Load() || reason == "shutdown":
		return nil
	case p.killing.Load():
		return fmt.Errorf("libvirt domain %s: killed by cloudlet", p.name)
	case reason == "destroyed":
		return fmt.Errorf("libvirt domain %s was destroyed outside cloudlet (virsh destroy): %w", p.name, ErrStoppedOutside)
	case reason == "":
		reason = "gone"
	}
	err := fmt.Sprintf("libvirt domain %s stopped (%s)", p.name, reason)
	if words := p.lastWords(); words != "" {
		err += ": " + words
	}
	return errors.New(err)
}

func (p *libvirtProcess) reconnect() {
	conn, err := libvirt.NewConnect(p.uri)
	if err != nil {
		return
	}
	dom, err := conn.LookupDomainByName(p.name)
	if err != nil {
		conn.Close()
		return
	}
	p.mu.Lock()
	oldConn, oldDom := p.conn, p.dom
	p.conn, p.dom = conn, dom
	p.mu.Unlock()
	oldDom.Free()
	oldConn.Close()
}

func (p *libvirtProcess) domain() *libvirt.Domain {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dom
}

// call runs a blocking libvirt call, but returns when ctx ends: libvirt waits for a monitor
// reply without a deadline of its own, and QEMU can be stuck (a vCPU on a FUSE fault).
func call(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *libvirtProcess) Execute(ctx context.Context, cmd string, args, out any) error {
	return p.monitor(ctx, cmd, args, out, nil)
}

func (p *libvirtProcess) SendFD(ctx context.Context, name string, f *os.File) error {
	return p.monitor(ctx, "getfd", map[string]any{"fdname": name}, nil, f)
}

func (p *libvirtProcess) monitor(ctx context.Context, cmd string, args, out any, f *os.File) error {
	req, err := qmpRequest(cmd, args)
	if err != nil {
		return err
	}
	dom := p.domain()
	var reply string
	err = call(ctx, func() error {
		var err error
		if f != nil {
			reply, _, err = dom.QemuMonitorCommandWithFiles(string(req), []os.File{*f}, libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
		} else {
			reply, err = dom.QemuMonitorCommand(string(req), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("qmp %s through libvirt: %s", cmd, libvirtMessage(err))
	}
	if done, err := decodeReply(cmd, []byte(reply), out); !done {
		return fmt.Errorf("qmp %s through libvirt: no answer in %q", cmd, reply)
	} else {
		return err
	}
}

// cont and pause go through libvirt's own calls, not QMP, so that libvirt (and virsh list)
// knows whether the guest runs.
func (p *libvirtProcess) cont(ctx context.Context) error {
	return p.lv(ctx, "resume", func(d *libvirt.Domain) error { return d.Resume() })
}

func (p *libvirtProcess) pause(ctx context.Context) error {
	return p.lv(ctx, "suspend", func(d *libvirt.Domain) error { return d.Suspend() })
}

func (p *libvirtProcess) quit(ctx context.Context) error {
	p.quitting.Store(true)
	return p.lv(ctx, "destroy", func(d *libvirt.Domain) error { return d.DestroyFlags(libvirt.DOMAIN_DESTROY_GRACEFUL) })
}

func (p *libvirtProcess) lv(ctx context.Context, what string, f func(*libvirt.Domain) error) error {
	dom := p.domain()
	if err := call(ctx, func() error { return f(dom) }); err != nil {
		return fmt.Errorf("libvirt %s of domain %s: %s", what, p.name, libvirtMessage(err))
	}
	return nil
}

// kill destroys the domain without waiting: the watcher sees it go.
func (p *libvirtProcess) kill() {
	p.killing.Store(true)
	dom := p.domain()
	go dom.Destroy()
}

func (p *libvirtProcess) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dom.Free()
	p.conn.Close()
	os.RemoveAll(p.runDir)
}

func (p *libvirtProcess) pid() int { return p.qemuPID }

func (p *libvirtProcess) String() string {
	if p.qemuPID > 0 {
		return fmt.Sprintf("libvirt domain %s, QEMU pid %d", p.name, p.qemuPID)
	}
	return "libvirt domain " + p.name
}

// log is this domain's part of libvirt's QEMU log, or "" where it cannot be read (a remote
// daemon, or a log directory elsewhere).
func (p *libvirtProcess) log() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 64 << 10
	from := p.logFrom
	if st, err := f.Stat(); err == nil && st.Size()-from > max {
		from = st.Size() - max
	}
	var b bytes.Buffer
	if _, err := f.Seek(from, 0); err != nil {
		return ""
	}
	b.ReadFrom(f)
	return b.String()
}

// qemuLine is a message of QEMU's own in libvirt's log: "TIMESTAMP qemu-system-x86_64: ...".
var qemuLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT[\d:.]+Z qemu-system-[\w-]+: (.*)$`)

// lastWords is what QEMU said on stderr in this run, without libvirt's own log lines.
func (p *libvirtProcess) lastWords() string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(p.log()))
	for sc.Scan() {
		if m := qemuLine.FindStringSubmatch(sc.Text()); m != nil {
			lines = append(lines, m[1])
		}
	}
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// findQEMU finds the domain's QEMU process on this host (libvirt names it guest=NAME), or 0.
func findQEMU(name string) int {
	entries, _ := os.ReadDir("/proc")
	want := []byte("guest=" + name + ",")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, want) {
			return pid
		}
	}
	return 0
}

// writeLauncher writes the emulator script for this binary and QEMU, once: libvirt caches
// what it learnt of an emulator by its modification time, and a new one costs seconds of
// probing at the next start.
func writeLauncher(qemu string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	if self, err = launcherBinary(self); err != nil {
		return "", err
	}
	script := launcherScript(self, qemu)
	h := sha256.Sum256([]byte(script))
	sum := hex.EncodeToString(h[:])
	dir, err := launcherDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "cloudlet-qemu-launcher-"+sum[:16])
	if b, err := os.ReadFile(path); err == nil && string(b) == script && ownFile(path) {
		return path, nil
	}
	err = installExecutable(path, func(out *os.File) error {
		_, err := out.WriteString(script)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	return path, nil
}

func isLibvirtError(err error, code libvirt.ErrorNumber) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == code
}

// libvirtMessage is libvirt's own text, without the binding's numeric wrapping.
func libvirtMessage(err error) string {
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		return lerr.Message
	}
	return err.Error()
}

func uriName(uri string) string {
	if uri == "" {
		return "libvirt's default URI"
	}
	return uri
}
