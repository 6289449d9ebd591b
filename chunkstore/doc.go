// Package chunkstore is a cloudlet's shared cache of verified overlay chunks: a bounded,
// content-addressed store on disk, keyed by each chunk's SHA-256, that every synthesis on the
// cloudlet reads before it fetches and fills with what it fetched. A second synthesis of the
// same overlay, or the next version of the same app, then fetches only what the store lacks.
//
// Layout. One file per chunk, dir/ab/abcdef… (the digest in hex, fanned out by its first
// byte), holding the chunk's bytes (4 KiB, or less for the last chunk of an image);
// dir/lock, the lock file of eviction; and dir/tags/NAME, empty files by which a caller notes
// that it stored a whole set of chunks (a synthesis: its overlay, by ID), dropped when a trim
// evicts a chunk the set may have held (see Tag). A file is the whole state of its entry: no index, no
// shared memory, so any number of processes (each synthesis runs in its own supervisor
// process) can open the same directory at once.
//
//   - Put queues the chunk; the Store's writer goroutine writes a temporary file beside the
//     entry and renames it into place: readers see an entry whole or not at all. It does not fsync: after a crash an entry may come back
//     empty or torn, and Get catches that (below), where an fsync per 4 KiB chunk would cost a
//     synthesis milliseconds per chunk.
//   - Get checks the bytes it read against the digest they are filed under before it returns
//     them. The store is on the trust path to a guest: a corrupt, truncated or swapped entry is
//     deleted, counted and reported as absent, never returned.
//   - Recency is the entry's modification time: Put sets it and Get refreshes it (at most once
//     per TouchEvery, to keep reads cheap). It survives restarts with the files.
//   - Eviction (Trim) takes dir/lock (flock; a process that finds it held leaves the work to
//     the holder), lists every entry, and removes the least recently used until the total is
//     within the bound. An entry touched after the listing is spared. Each Store starts a trim
//     in the background after it has added a sixteenth of the bound, so the directory holds at most
//     maxBytes plus one slice per writing process between trims.
//   - Put is best effort: a full disk or an I/O error is logged and counted, never returned,
//     and a full queue drops the chunk; the synthesis goes on without the store.
package chunkstore
