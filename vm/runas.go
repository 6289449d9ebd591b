package vm

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// QEMU runs confined: always under QEMU's own seccomp sandbox (no obsolete system calls, no
// change of user, no new processes, no scheduler or resource changes), and, with
// Options.RunAs, as an unprivileged user. The sandbox's elevateprivileges=deny is why the user
// switch happens in our launcher, before exec, and not through QEMU's -runas.
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// LookupUser finds a user QEMU can run as, with the user's groups (QEMU may need one for
// /dev/kvm).
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("qemu user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("qemu user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("qemu user %s: gid %q: %w", name, u.Gid, err)
	}
	r := &User{Name: name, UID: uid, GID: gid}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("qemu user %s: groups: %w", name, err)
	}
	for _, id := range ids {
		g, err := strconv.Atoi(id)
		if err != nil {
			return nil, fmt.Errorf("qemu user %s: group %q: %w", name, id, err)
		}
		if g != gid {
			r.Groups = append(r.Groups, g)
		}
	}
	return r, nil
}

func (u *User) String() string { return fmt.Sprintf("%s (uid %d, gid %d)", u.Name, u.UID, u.GID) }

// switches says whether running as u means a change of user for this process.
func (u *User) switches() bool {
	return u != nil && (u.UID != os.Geteuid() || u.GID != os.Getegid())
}

// Lend hands a file that QEMU opens itself (a memory file outside cloudletfs: QEMU 7.2's
// memory-backend-file takes no file descriptor) to u for a run: it is created if missing (0600)
// and given to u. The returned function gives it back to this process's user. Without a
// change of user both are no-ops.
func (u *User) Lend(path string) (giveBack func() error, err error) {
	if !u.switches() {
		return func() error { return nil }, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lend %s to %s: %w", path, u.Name, err)
	}
	defer f.Close()
	if err := f.Chown(u.UID, u.GID); err != nil {
		return nil, fmt.Errorf("lend %s to %s: %w", path, u.Name, err)
	}
	uid, gid := os.Geteuid(), os.Getegid()
	return func() error {
		if err := os.Chown(path, uid, gid); err != nil {
			return fmt.Errorf("give %s back from %s: %w", path, u.Name, err)
		}
		return nil
	}, nil
}

// ownedBy checks that u can open path for reading and writing through its owner bits, as QEMU
// must a memory file it opens itself.
func ownedBy(u *User, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner", path)
	}
	if int(sys.Uid) != u.UID || st.Mode().Perm()&0o600 != 0o600 {
		return fmt.Errorf("%s: QEMU runs as %s and opens it itself, so it must be that user's, mode 0600 at least: got uid %d, mode %v (see vm.User.Lend)",
			path, u, sys.Uid, st.Mode().Perm())
	}
	return nil
}

// env is the launcher's encoding of u: "UID:GID:GROUP,GROUP...".
func (u *User) env() string {
	groups := make([]string, len(u.Groups))
	for i, g := range u.Groups {
		groups[i] = strconv.Itoa(g)
	}
	return fmt.Sprintf("%d:%d:%s", u.UID, u.GID, strings.Join(groups, ","))
}

func parseRunAs(s string) (*User, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%s=%q: want UID:GID:GROUPS", runAsEnv, s)
	}
	var ids []int
	for _, p := range append(parts[:2], strings.Split(parts[2], ",")...) {
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%q: bad id %q", runAsEnv, s, p)
		}
		ids = append(ids, n)
	}
	if len(ids) < 2 {
		return nil, fmt.Errorf("%s=%q: want UID:GID:GROUPS", runAsEnv, s)
	}
	return &User{UID: ids[0], GID: ids[1], Groups: ids[2:]}, nil
}

// dropTo makes this process u for good: groups, then group, then user (Go applies each to all
// threads), then checks that root cannot be regained.
func dropTo(u *User) error {
	parent := os.Getppid()
	if err := syscall.Setgroups(u.Groups); err != nil {
		return fmt.Errorf("setgroups %v: %w", u.Groups, err)
	}
	if err := syscall.Setresgid(u.GID, u.GID, u.GID); err != nil {
		return fmt.Errorf("setresgid %d: %w", u.GID, err)
	}
	if err := syscall.Setresuid(u.UID, u.UID, u.UID); err != nil {
		return fmt.Errorf("setresuid %d: %w", u.UID, err)
	}
	if u.UID != 0 {
		if err := syscall.Setuid(0); err == nil {
			return errors.New("still able to become root after dropping privileges")
		}
	}
	// A change of credentials clears the parent-death signal: set it again, and make sure
	// the parent did not die in between.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_PDEATHSIG): %w", err)
	}
	if os.Getppid() != parent {
		return errors.New("the parent exited")
	}
	return nil
}
