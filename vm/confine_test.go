package vm_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

// statusScript prints the credentials the launcher left, and tries to become root again.
const statusScript = `tr -s '\t' ' ' </proc/self/status | grep -E '^(Uid|Gid|Groups|Seccomp):'
setpriv --reuid=0 --regid=0 true 2>/dev/null && echo "setuid(0): allowed" || echo "setuid(0): refused"`

// procStatus returns the named lines of /proc/PID/status, tabs made spaces.
func procStatus(pid int, keys ...string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	var out strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		for _, k := range keys {
			if strings.HasPrefix(line, k+":") {
				out.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
			}
		}
	}
	return out.String()
}

// TestLauncherDropsUser runs the launcher for real in a child: it becomes the given user and
// groups for good before it execs, and refuses a bad user.
func TestLauncherDropsUser(t *testing.T) {
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, runAs string
		want        []string // lines the child must print
		wantExit    int
	}{
		{"user, no groups", "65534:65534:", []string{"Uid: 65534 65534 65534 65534", "Gid: 65534 65534 65534 65534", "Groups: \n", "setuid(0): refused", "Seccomp: 0"}, 0},
		{"user and groups", "65534:65534:100,4242", []string{"Uid: 65534 65534 65534 65534", "Groups: 100 4242", "setuid(0): refused"}, 0},
		{"other group", "65534:4243:", []string{"Uid: 65534 65534 65534 65534", "Gid: 4243 4243 4243 4243"}, 0},
		{"bad user", "nobody", []string{"want UID:GID:GROUPS"}, 127},
		{"bad id", "65534:-1:", []string{"bad id"}, 127},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The child is a shell: the test binary sits in a directory only root may enter.
			cmd := exec.Command(self, "/bin/sh", "-c", statusScript)
			cmd.Env = append(os.Environ(), "CLOUDLET_QEMU_LAUNCHER_RUN_AS="+tc.runAs)
			out, err := cmd.CombinedOutput()
			exit := 0
			if ee, ok := err.(*exec.ExitError); ok {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tc.wantExit {
				t.Fatalf("exit status %d, want %d: %s", exit, tc.wantExit, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("child output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs QEMU as another user, which needs root")
	}
}

// TestConfinedQEMU boots the test guest with QEMU as an unprivileged user under its seccomp
// sandbox, with the disk, RAM file and kernel in a directory only root can enter, and checks
// from /proc that QEMU is confined; the guest answers through a forward, and a snapshot
// resumes, from the raw disk and from a qcow2 layer over it, with and without the hugepage
// filter.
func TestConfinedQEMU(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	u, err := vm.LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	port := testguest.FreePort(t)
	opts := guestOptions(t, port)
	dir := filepath.Dir(opts.Disk.Path)
	private(t, dir)
	opts.Kernel, opts.Initrd = privateCopy(t, opts.Kernel, dir), privateCopy(t, opts.Initrd, dir)
	opts.RunAs = u
	giveBack, err := u.Lend(opts.Memory.Path)
	if err != nil {
		t.Fatal(err)
	}

	v, err := vm.Boot(ctx, opts)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Cleanup(v.Kill)
	checkConfined(t, v.PID(), u)
	waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if out, status, err := v.Console().Run(ctx, "echo confined-marker > /root/marker"); err != nil || status != 0 {
		t.Fatalf("serial run: %q, %d, %v", out, status, err)
	}
	devstate := filepath.Join(dir, "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := giveBack(); err != nil {
		t.Fatal(err)
	}
	mem := privateCopy(t, opts.Memory.Path, t.TempDir())

	layer := filepath.Join(dir, "layer.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", opts.Disk.Path, layer).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	tests := []struct {
		name string
		disk vm.Disk
		keep bool
	}{
		{"raw disk", opts.Disk, false},
		{"qcow2 layer", vm.Disk{Path: layer, Format: "qcow2"}, false},
		{"without the hugepage filter", opts.Disk, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ropts := opts
			ropts.Disk, ropts.KeepHugepageAdvice = tc.disk, tc.keep
			ropts.Memory = vm.Memory{Path: filepath.Join(dir, "resume-memory.img")}
			copyFile(t, mem, ropts.Memory.Path)
			giveBack, err := u.Lend(ropts.Memory.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer giveBack()
			r, err := vm.Resume(ctx, ropts, devstate)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			defer r.Kill()
			checkConfined(t, r.PID(), u)
			waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port))
			if out, _, err := r.Console().Run(ctx, "cat /root/marker"); err != nil || !strings.Contains(out, "confined-marker") {
				t.Fatalf("marker: %q, %v", out, err)
			}
			if err := r.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkConfined reads QEMU's credentials and seccomp mode from /proc.
func checkConfined(t *testing.T, pid int, u *vm.User) {
	t.Helper()
	got := procStatus(pid, "Uid", "Gid", "Groups", "Seccomp")
	for _, want := range []string{
		fmt.Sprintf("Uid: %d %d %d %d\n", u.UID, u.UID, u.UID, u.UID),
		fmt.Sprintf("Gid: %d %d %d %d\n", u.GID, u.GID, u.GID, u.GID),
		"Seccomp: 2\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("QEMU pid %d: /proc status lacks %q:\n%s", pid, want, got)
		}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cmdline), "-sandbox\x00on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny") {
		t.Errorf("QEMU pid %d runs without the sandbox: %q", pid, cmdline)
	}
}

// private makes dir root's alone, as the base store is.
func private(t *testing.T, dir string) {
	t.Helper()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

// privateCopy copies src into dir with mode 0600.
func privateCopy(t *testing.T, src, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, "private-"+filepath.Base(src))
	copyFile(t, src, dst)
	return dst
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
	if err := os.Chmod(dst, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestConfinedFileErrors: files a confined QEMU cannot use are refused before it starts, and
// say why.
func TestConfinedFileErrors(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := vm.LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(t *testing.T, o *vm.Options)
		want   string
	}{
		{"memory file not lent", func(t *testing.T, o *vm.Options) {
			copyFile(t, "/dev/null", o.Memory.Path)
		}, "must be that user's"},
		{"memory file missing", func(t *testing.T, o *vm.Options) {}, "no such file"},
		{"qcow2 disk that is not qcow2", func(t *testing.T, o *vm.Options) {
			o.Disk.Format = "qcow2"
			giveBack, err := u.Lend(o.Memory.Path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { giveBack() })
		}, "qcow2 header: magic"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := guestOptions(t, testguest.FreePort(t))
			opts.RunAs = u
			tc.modify(t, &opts)
			v, err := vm.Boot(ctx, opts)
			if err == nil {
				v.Kill()
				t.Fatal("boot succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}
