package base

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/chunk"
)

// A base archive is attacker input when it comes from elsewhere: zstd turns 33 KiB into a
// 1 GiB run of equal bytes, and the file's digest is known only once all of it is written.
// So every file's size is bounded before a byte of it is written: by what the manifest's VM
// config allows, by a sane limit for each kind of file, and, for an import, by the free space
// of the store's filesystem.

// Limits on a base's files.
const (
	// maxDiskBytes bounds the disk image (and the overlay format's images).
	maxDiskBytes = 1 << 40
	// maxMemoryBytes bounds the VM's RAM, and so the memory image.
	maxMemoryBytes = 1 << 40
	// maxDevstateBytes bounds QEMU's device state without RAM: 381 KB was measured for a
	// 256 MiB guest; video RAM can add its size. An overlay carries at most 64 MiB of it.
	maxDevstateBytes = 64 << 20
	// maxKernelBytes bounds the kernel: a compressed one is about 10 MB, an uncompressed one
	// a few tens of MB. QEMU loads it into guest RAM, so it is also bounded by that.
	maxKernelBytes = 256 << 20
	// maxInitrdBytes bounds the initrd, which QEMU also loads into guest RAM.
	maxInitrdBytes = 2 << 30
	// maxNameLen, maxConfigString and maxAppendLen bound the manifest's strings.
	maxNameLen      = 256
	maxConfigString = 64
	maxAppendLen    = 4096
	// importReserve is free space an import leaves on the store's filesystem, for the caches of
	// running VMs.
	importReserve = 256 << 20
)

// fileLimit is the largest size the named file may have in a base with manifest m.
func fileLimit(m *Manifest, name string) int64 {
	switch name {
	case DiskFile:
		return maxDiskBytes
	case MemoryFile:
		return min(maxMemoryBytes, m.VM.MemoryBytes)
	case DevstateFile:
		return maxDevstateBytes
	case KernelFile:
		return min(maxKernelBytes, m.VM.MemoryBytes)
	case InitrdFile:
		return min(maxInitrdBytes, m.VM.MemoryBytes)
	case DiskIndexFile:
		return chunk.Count(maxDiskBytes) * chunk.DigestSize
	case MemoryIndexFile:
		return chunk.Count(maxMemoryBytes) * chunk.DigestSize
	}
	return 0
}

// totalBytes is the sum of the sizes of the base's files (each at most fileLimit, so the sum
// cannot overflow).
func (m *Manifest) totalBytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// freeBytes is the space an unprivileged writer has left on the filesystem holding dir.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}
