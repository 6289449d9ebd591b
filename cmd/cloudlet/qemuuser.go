package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cloudlet/cloudlet/vm"
)

// defaultQEMUUser is the system user QEMU runs as when cloudlet runs as root: no home, no
// shell, no rights but those its VM's files give it. make deps creates it, and so does the
// first command that runs a VM.
const defaultQEMUUser = "cloudlet-qemu"

// qemuUserFlag names the user QEMU runs as. It is global: the VM commands, serve and mount
// (whose images only that user may open) must agree.
func qemuUserFlag() cli.Flag {
	return &cli.StringFlag{Name: "qemu-user", EnvVars: []string{"CLOUDLET_QEMU_USER"},
		Usage: "user QEMU runs as (default: " + defaultQEMUUser + " when cloudlet runs as root, created if missing; " +
			"otherwise cloudlet's own user); 'root' runs QEMU unconfined by a user, as root"}
}

// parseQEMUUser resolves --qemu-user; nil means QEMU runs as this process's user.
func parseQEMUUser(c *cli.Context) (*vm.User, error) {
	u, err := resolveQEMUUser(c.String("qemu-user"), os.Geteuid(), createQEMUUser)
	if err != nil {
		return nil, fmt.Errorf("--qemu-user: %w", err)
	}
	return u, nil
}

// resolveQEMUUser is the policy: as root, QEMU never runs as root unless asked by name; a user
// that is not root cannot start QEMU as anyone else.
func resolveQEMUUser(name string, euid int, create func(string) error) (*vm.User, error) {
	if name == "" {
		if euid != 0 {
			return nil, nil
		}
		name = defaultQEMUUser
	}
	u, err := vm.LookupUser(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) && name == defaultQEMUUser && euid == 0 {
		if err := create(name); err != nil {
			return nil, err
		}
		u, err = vm.LookupUser(name)
	}
	switch {
	case errors.As(err, &unknown):
		return nil, fmt.Errorf("no user %s: create it (useradd --system --no-create-home --shell /usr/sbin/nologin %s) or name another", name, name)
	case err != nil:
		return nil, err
	case u.UID == euid:
		return nil, nil
	case euid != 0:
		return nil, fmt.Errorf("cloudlet runs as uid %d, and only root can start QEMU as %s", euid, u)
	}
	return u, nil
}

// createQEMUUser adds the system user QEMU runs as, in the kvm group where there is one (the
// group that may open /dev/kvm on Debian). Another cloudlet may create it at the same time:
// that is no error.
func createQEMUUser(name string) error {
	args := []string{"--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"}
	if _, err := user.LookupGroup("kvm"); err == nil {
		args = append(args, "--groups", "kvm")
	}
	out, err := exec.Command("useradd", append(args, name)...).CombinedOutput()
	if err != nil {
		if _, lerr := user.Lookup(name); lerr == nil {
			return nil
		}
		return fmt.Errorf("create the user QEMU runs as: useradd %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
