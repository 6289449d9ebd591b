package cloudletfs

import (
	"fmt"
	"strings"
)

// A mount can exist before its FS: the image names and sizes equal the base's, so QEMU can
// start and open (and mmap) its images while the overlay's index, without which the FS
// cannot be opened, is still on its way. Reads and writes then wait until Serve.

// Layout is an image's name and size: all a mount needs before the FS behind it exists.
type Layout struct {
	Name string
	Size int64
}

// MountPending mounts at dir the tree of images with these names and sizes (IMAGE/image,
// stats/, streams/) before their FS is open: lookups, getattr and open of the images are
// answered at once (so QEMU can open and mmap them); reads, writes and fsyncs of an image, and
// opens of stats/ and streams/ files, wait until Serve (or the request is interrupted, or the
// mount is unmounted, which fails them with EIO). Same options and checks as FS.Mount.
func MountPending(dir string, images []Layout, opts MountOptions) (*Mount, error) {
	if err := checkLayouts(images); err != nil {
		return nil, err
	}
	return mount(dir, newGate(append([]Layout(nil), images...)), nil, opts)
}

// Serve gives a pending mount its FS. The FS's images must have the mount's names and sizes,
// in order (else an error naming the first difference, and the mount stays pending); an FS
// with Files is refused (files are part of the tree made at mount time). Serving twice is an
// error. Waiting requests then proceed against fsys.
func (m *Mount) Serve(fsys *FS) error {
	if n := len(fsys.cfg.Files); n > 0 {
		return fmt.Errorf("cloudletfs: serve at %s: the FS has %d files (%s first), and a pending mount serves none: files are made at mount time",
			m.Dir, n, fsys.cfg.Files[0].Name)
	}
	if err := sameLayouts(fsys.layouts(), m.gate.layouts); err != nil {
		return fmt.Errorf("cloudletfs: serve at %s: %w", m.Dir, err)
	}
	return m.gate.serve(fsys)
}

// layouts are the names and sizes of the FS's images, in order.
func (f *FS) layouts() []Layout {
	out := make([]Layout, len(f.images))
	for i, img := range f.images {
		out[i] = Layout{Name: img.name, Size: img.size}
	}
	return out
}

// checkLayouts refuses what Open would refuse of an image's name or size.
func checkLayouts(images []Layout) error {
	seen := map[string]bool{}
	for _, l := range images {
		if !validImageName(l.Name) || seen[l.Name] {
			return fmt.Errorf("cloudletfs: bad or repeated image name %q", l.Name)
		}
		if l.Size <= 0 {
			return fmt.Errorf("image %s: size %d", l.Name, l.Size)
		}
		seen[l.Name] = true
	}
	return nil
}

// validImageName: one plain name, not one of the mount's own directories.
func validImageName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "/.") && name != "stats" && name != "streams"
}

// sameLayouts names the first difference between the FS's images and the mount's.
func sameLayouts(got, want []Layout) error {
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			return fmt.Errorf("image %d: got none (the FS has %d images), want %s", i, len(got), want[i])
		case i >= len(want):
			return fmt.Errorf("image %d: got %s, want none (the mount has %d images)", i, got[i], len(want))
		case got[i] != want[i]:
			return fmt.Errorf("image %d: got %s, want %s", i, got[i], want[i])
		}
	}
	return nil
}

func (l Layout) String() string { return fmt.Sprintf("%s of %d bytes", l.Name, l.Size) }
