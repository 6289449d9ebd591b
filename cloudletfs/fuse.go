package cloudletfs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The FUSE layer is a thin adapter: nodes translate requests into calls on Image and FS, and
// toErrno is the one place errors become errno values.

// rootNode builds the tree: IMAGE/image for each image, stats/IMAGE, streams/KIND, and the
// files. The tree comes from the layouts alone, so it can exist before the FS behind it.
type rootNode struct {
	fs.Inode
	gate  *gate
	files []File
	log   *log.Logger
	own   owners
	// readOnly refuses writes to the images here too, not only in the kernel (a ro mount).
	readOnly bool
}

var (
	_ = (fs.NodeOnAdder)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
)

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setOwner(&out.Attr, r.own.server, fuse.S_IFDIR|r.own.rootMode())
	return 0
}

func (r *rootNode) OnAdd(ctx context.Context) {
	dir := func(owner User) *fs.Inode {
		return r.NewPersistentInode(ctx, &dirNode{owner: owner}, fs.StableAttr{Mode: fuse.S_IFDIR})
	}
	pseudo := func(path string, open func(*FS) fs.FileHandle) *fs.Inode {
		n := &pseudoFile{path: path, gate: r.gate, open: open, log: r.log, owner: r.own.server}
		return r.NewPersistentInode(ctx, n, fs.StableAttr{Mode: fuse.S_IFREG})
	}
	stats := dir(r.own.server)
	r.AddChild("stats", stats, false)
	streamsDir := dir(r.own.server)
	r.AddChild("streams", streamsDir, false)
	for i, l := range r.gate.layouts {
		d := dir(r.own.images)
		r.AddChild(l.Name, d, false)
		img := &imageNode{gate: r.gate, i: i, layout: l, log: r.log, owner: r.own.images, readOnly: r.readOnly}
		d.AddChild("image", r.NewPersistentInode(ctx, img, fs.StableAttr{Mode: fuse.S_IFREG}), false)
		stats.AddChild(l.Name, pseudo("stats/"+l.Name, func(fsys *FS) fs.FileHandle {
			return &bytesHandle{b: []byte(fsys.images[i].Stats().String())}
		}), false)
	}
	for _, file := range r.files {
		r.AddChild(file.Name, r.NewPersistentInode(ctx, &fileNode{data: file.Data, owner: r.own.images}, fs.StableAttr{Mode: fuse.S_IFREG}), false)
	}
	for k, name := range streamNames {
		streamsDir.AddChild(name, pseudo("streams/"+name, func(fsys *FS) fs.FileHandle {
			return &streamHandle{r: &follower[ChunkEvent]{log: fsys.ev.chunks[k]}}
		}), false)
	}
	streamsDir.AddChild("io", pseudo("streams/io", func(fsys *FS) fs.FileHandle {
		return &streamHandle{r: &follower[IOEvent]{log: fsys.ev.ioLog}}
	}), false)
}

// setOwner fills in a node's mode and owner. Every node says who owns it: go-fuse would
// report root for a node that does not, whoever serves the mount.
func setOwner(out *fuse.Attr, owner User, mode uint32) {
	out.Mode = mode
	out.Uid, out.Gid = owner.UID, owner.GID
	out.Nlink = 1
}

// dirNode is a directory of the fixed tree: IMAGE/, stats/ or streams/.
type dirNode struct {
	fs.Inode
	owner User
}

var _ = (fs.NodeGetattrer)((*dirNode)(nil))

func (n *dirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setOwner(&out.Attr, n.owner, fuse.S_IFDIR|dirMode)
	return 0
}

// imageNode is disk/image or memory/image: handle-less, served through the page cache with
// constant attributes, so QEMU can mmap it (shared or private). Its attributes come from the
// layout; its bytes from the i-th image of the FS, once there.
type imageNode struct {
	fs.Inode
	gate     *gate
	i        int
	layout   Layout
	log      *log.Logger
	owner    User
	readOnly bool
}

var (
	_ = (fs.NodeGetattrer)((*imageNode)(nil))
	_ = (fs.NodeSetattrer)((*imageNode)(nil))
	_ = (fs.NodeOpener)((*imageNode)(nil))
	_ = (fs.NodeReader)((*imageNode)(nil))
	_ = (fs.NodeWriter)((*imageNode)(nil))
	_ = (fs.NodeFsyncer)((*imageNode)(nil))
	_ = (fs.NodeFlusher)((*imageNode)(nil))
)

func (n *imageNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setOwner(&out.Attr, n.owner, fuse.S_IFREG|imageMode)
	out.Size = uint64(n.layout.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	return 0
}

// Setattr accepts what QEMU and tools do to an image of the right size (a truncate to its
// own size, times, modes) and refuses resizing.
func (n *imageNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.layout.Size {
		return syscall.EPERM
	}
	return n.Getattr(ctx, f, out)
}

func (n *imageNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.readOnly && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	// KEEP_CACHE: the bytes behind a page never change except through this mount, so the
	// kernel may keep what it has read across opens.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// image waits for the FS behind the mount (see gate.wait).
func (n *imageNode) image(ctx context.Context) (*Image, error) {
	img, err := n.gate.image(ctx, n.i)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", n.layout.Name, err)
	}
	return img, nil
}

func (n *imageNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	img, err := n.image(ctx)
	if err != nil {
		return nil, toErrno(n.log, err)
	}
	got, err := img.ReadAt(ctx, dest, off)
	if err != nil {
		return nil, toErrno(n.log, err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *imageNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if n.readOnly {
		return 0, syscall.EROFS
	}
	img, err := n.image(ctx)
	if err != nil {
		return 0, toErrno(n.log, err)
	}
	got, err := img.WriteAt(ctx, data, off)
	if err != nil {
		return 0, toErrno(n.log, err)
	}
	return uint32(got), 0
}

func (n *imageNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	img, err := n.image(ctx)
	if err != nil {
		return toErrno(n.log, err)
	}
	return toErrno(n.log, img.Sync())
}

func (n *imageNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// pseudoFile is a read-only file under stats/ or streams/ whose content is made per open: a
// snapshot of counters, or a live stream. DIRECT_IO, since no size is known in advance. An
// open waits for the FS behind the mount, whose counters and streams these are.
type pseudoFile struct {
	fs.Inode
	path  string // stats/IMAGE or streams/KIND, for errors
	gate  *gate
	open  func(*FS) fs.FileHandle
	log   *log.Logger
	owner User
}

var (
	_ = (fs.NodeOpener)((*pseudoFile)(nil))
	_ = (fs.NodeGetattrer)((*pseudoFile)(nil))
)

func (n *pseudoFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setOwner(&out.Attr, n.owner, fuse.S_IFREG|pseudoMode)
	return 0
}

func (n *pseudoFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EACCES
	}
	fsys, err := n.gate.wait(ctx)
	if err != nil {
		return nil, 0, toErrno(n.log, fmt.Errorf("%s: %w", n.path, err))
	}
	return n.open(fsys), fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, 0
}

// bytesHandle serves one snapshot (stats/IMAGE).
type bytesHandle struct{ b []byte }

var _ = (fs.FileReader)((*bytesHandle)(nil))

func (h *bytesHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(h.b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.b[off:min(int64(len(h.b)), off+int64(len(dest)))]), 0
}

type streamReader interface {
	read(ctx context.Context, p []byte) (int, error)
}

// streamHandle follows one stream (streams/KIND) from its start.
type streamHandle struct{ r streamReader }

var _ = (fs.FileReader)((*streamHandle)(nil))

func (h *streamHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.r.read(ctx, dest)
	if err != nil {
		return nil, syscall.EINTR
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// toErrno is the one place where errors become errno values. A cancelled request (the reader
// was interrupted) is EINTR; everything else is EIO and logged, since the kernel passes no
// message on.
func toErrno(l *log.Logger, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, errUnmounted):
		// The session ended before its index came, and says why itself: QEMU's reads
		// during its start are no news.
		return syscall.EIO
	}
	if l != nil {
		l.Printf("cloudletfs: %v", err)
	}
	return syscall.EIO
}
