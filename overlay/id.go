package overlay

import "encoding/hex"

// HeaderID checks the header at the start of b (at least HeaderSize bytes of a file of
// fileSize bytes) and returns the overlay ID it records: the SHA-256 of the index, which Open
// checks. A catalogue that names an overlay by ID (a registry's annotation) is held to it
// with this before the index is read.
func HeaderID(b []byte, fileSize int64) (string, error) {
	h, err := decodeHeader(b, fileSize)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.indexSHA[:]), nil
}
