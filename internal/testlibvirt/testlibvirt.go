// Package testlibvirt starts a private libvirt daemon for a test: its own configuration,
// state, logs and socket under a temporary directory, bound over libvirt's fixed paths in a
// mount namespace of its own, so the host's /etc and libvirt state are never touched. The
// daemon is stopped, and every domain it runs destroyed, when the test ends.
package testlibvirt

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// Daemon is a running private libvirtd.
type Daemon struct {
	URI    string // qemu:///system through the private socket
	LogDir string // where QEMU's domain logs land, as this process sees them
	dir    string
	cmd    *exec.Cmd
}

// qemuConf is libvirt's defaults, as the README asks for no change (the DAC security driver
// on; cloudlet's domains carry their own user), plus what a host without systemd needs: QEMU
// logs to files (no virtlogd) and no cgroup controllers.
const qemuConf = `stdio_handler = "file"
cgroup_controllers = [ ]
`

const libvirtdConf = `unix_sock_dir = "/run/libvirt"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
`

// Start starts the daemon. Mounts made later under shared (cloudletfs's) are visible to it and
// its QEMUs: shared becomes a shared mount point first, and the daemon's namespace its slave.
func Start(t testing.TB, shared string) *Daemon {
	t.Helper()
	testguest.Require(t, "libvirtd", "virsh", "unshare", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Fatal("the private libvirt daemon needs root (mount namespaces, bind mounts)")
	}
	dir := t.TempDir()
	d := &Daemon{URI: "qemu:///system?socket=" + filepath.Join(dir, "run", "libvirt-sock"), LogDir: filepath.Join(dir, "log", "qemu"), dir: dir}
	for _, sub := range []string{"etc", "run", "lib", "log", "cache"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("qemu.conf", qemuConf)
	write("libvirtd.conf", libvirtdConf)
	write("libvirt.conf", "")
	// libvirt 9.0 looks up its libvirt-qemu user even when QEMU runs as root.
	for _, f := range []struct{ name, line string }{
		{"passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"},
		{"group", "libvirt-qemu:x:64055:\n"},
	} {
		b, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("\nlibvirt-qemu:")) {
			b = append(b, f.line...)
		}
		write(f.name, string(b))
	}

	mount := func(args ...string) {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
	mount("--bind", shared, shared)
	t.Cleanup(func() { exec.Command("umount", "-l", shared).Run() })
	mount("--make-shared", shared)
	shareRunDir(t)

	script := `set -e
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/etc/passwd" /etc/passwd
mount --bind "$1/etc/group" /etc/group
for d in run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
	mkdir -p "${d#*:}"
	mount --bind "$1/${d%%:*}" "${d#*:}"
done
libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid &
# This shell is the namespace's init: wait reaps every orphan (QEMU's capability probes
# daemonize), which libvirt waits to see gone.
wait
`
	logf, err := os.Create(filepath.Join(dir, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// A PID namespace of its own: a test binary may be a child subreaper that does not reap
	// everything at once, and zombies of QEMU's probes would stall libvirt. When unshare
	// ends, its child, the namespace's init, is killed, and with it the whole namespace.
	d.cmd = exec.Command("unshare", "--mount", "--propagation", "slave", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script, "sh", dir)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// The daemon dies with the test binary, whatever happens to it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start libvirtd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop(t, exited) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := d.Virsh("version"); err == nil {
			return d
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("libvirtd exited: %v\n%s", err, d.Log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd not answering after 30 s:\n%s", d.Log())
		}
	}
}

// shareRunDir makes cloudletfs's run directory, where the mounts for a QEMU of another user
// go, a shared mount point, so that they reach the daemon's namespace too (a host with
// systemd shares every mount already). It stays so: undoing it would hide the mounts of
// whoever else uses the directory meanwhile. --rbind keeps the mounts already there.
func shareRunDir(t testing.TB) {
	t.Helper()
	dir := cloudletfs.RunDir
	if err := os.MkdirAll(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	// Test binaries of two packages may get here at once: both would see the directory
	// unshared and bind it twice, and a daemon started on the lower bind never sees the
	// mounts made on the upper one (QEMU then finds the bare mount point: "Permission
	// denied"). So one at a time, by a lock outside the directory.
	lock, err := os.OpenFile(dir+".share.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close() // and with it the lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) > 0 && strings.Contains(mounts[0].Optional, "shared:") {
		return
	}
	for _, args := range [][]string{{"--rbind", dir, dir}, {"--make-rshared", dir}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
}

// Virsh runs virsh against the daemon.
func (d *Daemon) Virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", d.URI}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Domains lists the names of all domains, running or not.
func (d *Daemon) Domains(t testing.TB) []string {
	t.Helper()
	out, err := d.Virsh("list", "--all", "--name")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)
}

// Log is the daemon's own log, for failure messages.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "libvirtd.log"))
	return string(b)
}

func (d *Daemon) stop(t testing.TB, exited chan error) {
	out, _ := d.Virsh("list", "--name")
	for _, name := range strings.Fields(out) {
		d.Virsh("destroy", name)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-exited
	}
}
