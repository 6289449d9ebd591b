// Package cloudletfs serves a VM's disk and memory images through FUSE, lazily and verified.
//
// The core (Image, FS) knows nothing of FUSE, HTTP or the overlay format. Each image is a
// chunk store: a read-only base file, a sparse cache file and a durable presence map. A chunk
// is base, zero, pending, present or modified (see State). Reads of pending chunks block and
// are reported once to a Demander; a source answers with FS.Deliver, after checking the
// chunk's digest. Data flows one way: source → Deliver → cache file → FUSE → QEMU.
//
// The FUSE layer (fuse.go) is a thin go-fuse adapter: IMAGE/image files served through the
// page cache (so QEMU can mmap them, shared or private), stats/ snapshots and streams/ that
// follow events live. toErrno is the only place errors become errno values.
//
// A mount may exist before its FS (pending.go): MountPending builds the tree from the images'
// names and sizes, which equal the base's, so QEMU can start and open its images while the
// overlay's index is still on its way; reads and writes wait until Mount.Serve gives the
// mount its FS. One small type, gate, owns "the FS, once there"; the nodes ask it.
//
// Access (access.go): mounts use default_permissions, and the images are 0600, owned by the
// one user that may open them (this process's, or MountOptions.User's: QEMU's, with
// allow_other); caches are 0700/0600.
//
// Durability: a chunk written to the cache is recorded in the presence map only after the
// cache file is fsynced (every FlushInterval, on fsync from the client, and at Close), so a
// crash never makes an unwritten chunk look present.
//
// The cache invariant: a chunk recorded present holds exactly the overlay's verified bytes,
// whatever crashes when. Syncs are serialised and record each chunk's latest state only; the
// VM's first write to a chunk recorded present durably downgrades the record to modified
// before its bytes reach the cache file (one fdatasync of the map, paid once per chunk); and
// a reused cache whose images have ImageConfig.Expected is checked against the overlay's
// digests at Open, every mismatch logged and fetched again.
package cloudletfs
