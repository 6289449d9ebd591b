package vm

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// confinement is what a QEMU that runs as another user needs to reach its files: the store
// that holds them is private to this process's user, so QEMU gets copies, open files or
// paths through its own file descriptors instead of the store's paths.
type confinement struct {
	files []*os.File // passed to QEMU as fds 3, 4, ...
	args  []string   // -add-fd options for the block layer's fd sets
}

// close closes our copies of the passed files; QEMU keeps its own.
func (c *confinement) close() {
	for _, f := range c.files {
		f.Close()
	}
}

// pass hands f to QEMU and returns the fd number it has there.
func (c *confinement) pass(f *os.File) int {
	c.files = append(c.files, f)
	return 2 + len(c.files)
}

// addFD puts f into QEMU's fd set: the block layer opens /dev/fdset/SET, and takes the
// passed file whose access mode matches.
func (c *confinement) addFD(set int, f *os.File) {
	fd := c.pass(f)
	c.args = append(c.args, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd, set))
}

// confine prepares opts for a QEMU that runs as opts.RunAs in runDir, and returns the options
// QEMU is to be given. Call close on the confinement once QEMU has started (or failed to).
func confine(opts Options, runDir string) (Options, *confinement, error) {
	c := &confinement{}
	u := opts.RunAs
	if !u.switches() {
		return opts, c, nil
	}
	opts, err := giveRunDir(opts, runDir)
	if err != nil {
		return opts, c, err
	}
	if opts.ServedByCaller {
		// The caller's mount exposes the images to u; we must not open them ourselves.
		return opts, c, nil
	}
	if opts.Disk.Path, err = c.disk(opts.Disk); err != nil {
		c.close()
		return opts, c, err
	}
	if opts.Memory.Path, err = c.memory(u, opts.Memory.Path); err != nil {
		c.close()
		return opts, c, err
	}
	return opts, c, nil
}

// giveRunDir makes the run directory (QEMU's sockets) opts.RunAs's, and puts copies of the
// kernel and initrd in it, for either driver.
func giveRunDir(opts Options, runDir string) (Options, error) {
	u := opts.RunAs
	// The copies first, the directory's owner last: until then the user has no hold on it.
	var err error
	for _, f := range []struct {
		path *string
		name string
	}{{&opts.Kernel, "kernel"}, {&opts.Initrd, "initrd"}} {
		if *f.path == "" {
			continue
		}
		if *f.path, err = copyFor(u, *f.path, filepath.Join(runDir, f.name)); err != nil {
			return opts, err
		}
	}
	if err := os.Chmod(runDir, 0o700); err != nil {
		return opts, fmt.Errorf("vm run directory: %w", err)
	}
	if err := os.Chown(runDir, u.UID, u.GID); err != nil {
		return opts, fmt.Errorf("vm run directory: %w", err)
	}
	return opts, nil
}

// copyFor copies a file QEMU only reads (the kernel, the initrd: small, and QEMU reads them
// by path) to dst, readable by u alone.
func copyFor(u *User, src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return "", fmt.Errorf("copy %s for qemu: %w", src, err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return "", fmt.Errorf("copy %s for qemu: %w", src, err)
	}
	if err := out.Chown(u.UID, u.GID); err != nil {
		return "", fmt.Errorf("copy %s for qemu: %w", src, err)
	}
	return dst, out.Close()
}

// disk passes the disk (and a qcow2 disk's backing file) as open files, so QEMU needs no
// right on them: it can use them, but neither change their owner or mode nor open others.
// It returns the disk's name for QEMU. One level of backing file is enough for the layer
// over a base's raw disk; a deeper chain's further files QEMU would open by name.
func (c *confinement) disk(d Disk) (string, error) {
	const diskSet, backingSet = 1, 2
	var backing, backingFormat string
	if d.Format == "qcow2" {
		var err error
		if backing, backingFormat, err = qcow2Backing(d.Path); err != nil {
			return "", err
		}
	}
	// One file per access mode: the block layer opens read-only, then read-write, and
	// QEMU picks the passed file whose mode matches.
	for _, flag := range []int{os.O_RDWR, os.O_RDONLY} {
		f, err := os.OpenFile(d.Path, flag, 0)
		if err != nil {
			return "", fmt.Errorf("disk: %w", err)
		}
		c.addFD(diskSet, f)
	}
	top := "/dev/fdset/" + strconv.Itoa(diskSet)
	if backing == "" {
		return top, nil
	}
	if !filepath.IsAbs(backing) {
		backing = filepath.Join(filepath.Dir(d.Path), backing)
	}
	f, err := os.Open(backing)
	if err != nil {
		return "", fmt.Errorf("disk %s: backing file: %w", d.Path, err)
	}
	c.addFD(backingSet, f)
	// The backing file's name is in the qcow2 header; a json: name overrides it.
	back := map[string]any{"driver": "file", "filename": "/dev/fdset/" + strconv.Itoa(backingSet)}
	if backingFormat != "" {
		back = map[string]any{"driver": backingFormat, "file": back}
	}
	return "json:" + jsonArg(map[string]any{
		"file":    map[string]any{"driver": "file", "filename": top},
		"backing": back,
	}), nil
}

// memory makes the memory file reachable: QEMU 7.2 opens it by name, and the directories above
// it are not the user's, so QEMU gets it through its own /proc/self/fd. Opening that link
// checks the file's own permissions, which must let u read and write it.
func (c *confinement) memory(u *User, path string) (string, error) {
	if err := ownedBy(u, path); err != nil {
		return "", fmt.Errorf("memory: %w", err)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("memory: open %s: %w", path, err)
	}
	n := c.pass(os.NewFile(uintptr(fd), path))
	return "/proc/self/fd/" + strconv.Itoa(n), nil
}
