// Package chunk is the shared vocabulary of cloudlet's images: the chunk size and the
// per-chunk digests that bases, overlays and cloudletfs agree on.
package chunk

import (
	"crypto/sha256"
	"encoding/hex"
)

// Size is the unit of dedup, fetching and presence tracking. It equals the guest page size, so a
// memory fault asks for exactly one chunk, and it matches Elijah's granularity.
const Size = 4096

// DigestSize is the length of a SHA-256 chunk digest.
const DigestSize = sha256.Size

// Digest identifies a chunk's content.
type Digest [DigestSize]byte

// Sum returns the digest of data.
func Sum(data []byte) Digest { return sha256.Sum256(data) }

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Count is the number of chunks that cover an image of size bytes; the last one may be short.
func Count(size int64) int64 { return (size + Size - 1) / Size }
