package vm_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/internal/testlibvirt"
	"github.com/cloudlet/cloudlet/vm"
)

// TestLibvirtDriver runs the test guest through a private libvirt daemon: boot, snapshot and
// resume as domains operators see with virsh; a snapshot taken under libvirt resumes under the
// QEMU driver (same hardware); and the errors an operator meets are clear.
func TestLibvirtDriver(t *testing.T) {
	if !vm.LibvirtBuilt {
		t.Fatal("this test binary was built without the libvirt driver")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	port := testguest.FreePort(t)
	opts := guestOptions(t, port)
	d := testlibvirt.Start(t, filepath.Dir(opts.Memory.Path))
	opts.Driver = vm.DriverLibvirt
	opts.Libvirt = vm.Libvirt{URI: d.URI, LogDir: d.LogDir}
	opts.Name = "vmtest"
	state := func() string {
		out, _ := d.Virsh("domstate", "cloudlet-vmtest")
		return strings.TrimSpace(out)
	}

	v, err := vm.Boot(ctx, opts)
	if err != nil {
		t.Fatalf("boot: %v\ndaemon log:\n%s", err, d.Log())
	}
	t.Cleanup(v.Kill)
	if got := state(); got != "running" {
		t.Fatalf("virsh domstate after boot: %q", got)
	}
	if !strings.Contains(v.String(), "cloudlet-vmtest") {
		t.Errorf("VM name %q does not name the domain", v)
	}
	// QEMU runs under our launcher, as with the QEMU driver.
	if v.PID() == 0 {
		t.Fatal("QEMU's pid not found")
	}
	if flags := ramFlags(t, v.PID(), opts.Memory.Path); strings.Contains(flags, " hg") {
		t.Errorf("RAM mapping has MADV_HUGEPAGE under libvirt: %s", flags)
	}
	if err := v.Console().WaitFor(ctx, "cloudlet-guest: ready"); err != nil {
		t.Fatal(err)
	}
	waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if out, status, err := v.Console().Run(ctx, "echo libvirt-marker > /root/marker"); err != nil || status != 0 {
		t.Fatalf("serial run: %q, %d, %v", out, status, err)
	}

	t.Run("name taken", func(t *testing.T) {
		again := opts
		again.Forwards = []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: testguest.FreePort(t), GuestPort: 80}}
		if w, err := vm.Boot(ctx, again); err == nil {
			w.Kill()
			t.Fatal("a second domain of the same name started")
		} else if !strings.Contains(err.Error(), "cloudlet-vmtest already exists") || !strings.Contains(err.Error(), "virsh destroy") {
			t.Fatalf("error: %v", err)
		}
	})

	devstate := filepath.Join(filepath.Dir(opts.Memory.Path), "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if names := d.Domains(t); len(names) != 0 {
		t.Fatalf("domains left after the snapshot: %v", names)
	}

	for _, driver := range []vm.Driver{vm.DriverLibvirt, vm.DriverQEMU} {
		t.Run("resume under "+string(driver), func(t *testing.T) {
			ropts := opts
			ropts.Driver = driver
			ropts.Memory.Share = false
			r, err := vm.Resume(ctx, ropts, devstate)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			defer r.Kill()
			waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port))
			if out, _, err := r.Console().Run(ctx, "cat /root/marker"); err != nil || !strings.Contains(out, "libvirt-marker") {
				t.Fatalf("marker: %q, %v", out, err)
			}
			if driver == vm.DriverLibvirt {
				if got := state(); got != "running" {
					t.Fatalf("virsh domstate after resume: %q", got)
				}
				// An operator's 'virsh destroy' ends the VM, and says so.
				if _, err := d.Virsh("destroy", "cloudlet-vmtest"); err != nil {
					t.Fatal(err)
				}
				select {
				case <-r.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("the VM did not notice virsh destroy")
				}
				if err := r.Err(); err == nil || !strings.Contains(err.Error(), "destroyed") {
					t.Fatalf("exit error after virsh destroy: %v", err)
				}
			}
			if err := r.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("device state mismatch", func(t *testing.T) { checkMismatch(t, ctx, opts, devstate) })
	t.Run("no daemon", func(t *testing.T) {
		none := opts
		none.Libvirt.URI = "qemu:///system?socket=" + filepath.Join(t.TempDir(), "no-such-sock")
		_, err := vm.Boot(ctx, none)
		if err == nil || !strings.Contains(err.Error(), "cannot reach a daemon at qemu:///system?socket=") {
			t.Fatalf("error: %v", err)
		}
	})
	if names := d.Domains(t); !slices.Equal(names, nil) {
		t.Fatalf("domains left: %v", names)
	}
}

// TestLibvirtConfined runs the test guest through a private libvirt daemon with QEMU as an
// unprivileged user (a static DAC label on the domain) under libvirt's own seccomp sandbox.
func TestLibvirtConfined(t *testing.T) {
	if !vm.LibvirtBuilt {
		t.Fatal("this test binary was built without the libvirt driver")
	}
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	u, err := vm.LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	port := testguest.FreePort(t)
	opts := guestOptions(t, port)
	dir := filepath.Dir(opts.Memory.Path)
	d := testlibvirt.Start(t, dir)
	opts.Driver = vm.DriverLibvirt
	opts.Libvirt = vm.Libvirt{URI: d.URI, LogDir: d.LogDir}
	opts.Name = "confined"
	opts.RunAs = u
	// The images are the user's, in a directory it can reach, as a cloudletfs mount gives
	// them to it: only such images can be given to an unprivileged QEMU under libvirt.
	opts.ServedByCaller = true
	for _, p := range []string{dir, opts.Disk.Path} {
		if err := os.Chown(p, u.UID, u.GID); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Lend(opts.Memory.Path); err != nil {
		t.Fatal(err)
	}
	v, err := vm.Boot(ctx, opts)
	if err != nil {
		t.Fatalf("boot: %v\ndaemon log:\n%s", err, d.Log())
	}
	t.Cleanup(v.Kill)
	checkConfined(t, v.PID(), u)
	waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port))
	devstate := filepath.Join(dir, "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	ropts := opts
	ropts.Memory.Share = false
	r, err := vm.Resume(ctx, ropts, devstate)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	defer r.Kill()
	checkConfined(t, r.PID(), u)
	waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port))
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
