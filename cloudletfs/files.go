package cloudletfs

import (
	"context"
	"fmt"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// File is a small read-only file at the root of a mount, beside the images: what a tool needs
// to use them (a VM's device state, its configuration, a command line that runs it). Its
// content is fixed when the FS is opened.
type File struct {
	Name string
	Data []byte
}

// maxFileBytes bounds one File: they are held in memory for the mount's life.
const maxFileBytes = 64 << 20

// checkFiles refuses a file whose name is not one plain name, or is taken by an image or by
// stats/ and streams/.
func checkFiles(files []File, images []ImageConfig) error {
	taken := map[string]bool{"stats": true, "streams": true}
	for _, ic := range images {
		taken[ic.Name] = true
	}
	for _, f := range files {
		if f.Name == "" || f.Name == "." || f.Name == ".." || strings.Contains(f.Name, "/") || taken[f.Name] {
			return fmt.Errorf("cloudletfs: bad or repeated file name %q", f.Name)
		}
		if len(f.Data) > maxFileBytes {
			return fmt.Errorf("cloudletfs: file %s: %d bytes, more than %d", f.Name, len(f.Data), maxFileBytes)
		}
		taken[f.Name] = true
	}
	return nil
}

// fileNode serves a File: constant size and content, kept in the page cache, read by the
// images' owner (QEMU's user reads the device state) and never written.
type fileNode struct {
	fs.Inode
	data  []byte
	owner User
}

// fileMode: read-only for the images' owner.
const fileMode = 0o400

var (
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
)

func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	setOwner(&out.Attr, n.owner, fuse.S_IFREG|fileMode)
	out.Size = uint64(len(n.data))
	out.Blocks = (out.Size + 511) / 512
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *fileNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(n.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(n.data[off:min(int64(len(n.data)), off+int64(len(dest)))]), 0
}
