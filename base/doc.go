// Package base is the store of base VMs on a cloudlet: one directory per base holding the raw
// disk, the memory image, QEMU's device state, the kernel and initrd it booted, a per-chunk
// SHA-256 index of disk and memory (for overlay dedup), and a manifest. A base's ID is the
// SHA-256 of its manifest, which in turn pins every file's digest and the VM config that a
// resume must repeat.
//
// Bases appear only whole: they are built in a locked draft directory and renamed into place,
// so a crash mid-create or mid-import leaves nothing that List shows, and the next Open
// removes the leftovers.
package base
