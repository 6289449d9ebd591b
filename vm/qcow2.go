package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// qcow2 header fields this package reads (QEMU's docs/interop/qcow2.txt): a confined QEMU gets
// a qcow2 disk's backing file as an open file, so the driver must know which file that is.
const (
	qcow2Magic          = 0x514649fb // "QFI\xfb"
	qcow2V2HeaderLen    = 72
	qcow2MaxBackingName = 1023 // the format's own limit
	qcow2MaxExtensions  = 64 << 10
	qcow2BackingFormat  = 0xe2792aca // header extension: the backing file's format name
	qcow2EndOfExt       = 0
)

// qcow2Backing reads a qcow2 file's backing file name and format ("" if it has none).
func qcow2Backing(path string) (name, format string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	name, format, err = readQCOW2Backing(f)
	if err != nil {
		return "", "", fmt.Errorf("disk %s: qcow2 header: %w", path, err)
	}
	return name, format, nil
}

func readQCOW2Backing(r io.ReaderAt) (name, format string, err error) {
	var h [104]byte
	if _, err := r.ReadAt(h[:], 0); err != nil && !(errors.Is(err, io.EOF)) {
		return "", "", err
	}
	be := binary.BigEndian
	if got := be.Uint32(h[0:]); got != qcow2Magic {
		return "", "", fmt.Errorf("magic: got %#x, want %#x", got, qcow2Magic)
	}
	version := be.Uint32(h[4:])
	off, size := be.Uint64(h[8:]), be.Uint32(h[16:])
	if size == 0 {
		return "", "", nil
	}
	if size > qcow2MaxBackingName {
		return "", "", fmt.Errorf("backing file name of %d bytes: want at most %d", size, qcow2MaxBackingName)
	}
	b := make([]byte, size)
	if _, err := r.ReadAt(b, int64(off)); err != nil {
		return "", "", fmt.Errorf("backing file name: %w", err)
	}
	extAt := uint64(qcow2V2HeaderLen)
	if version >= 3 {
		extAt = uint64(be.Uint32(h[100:]))
	}
	format, err = readQCOW2Extensions(r, extAt)
	return string(b), format, err
}

// readQCOW2Extensions walks the header extensions for the backing format name.
func readQCOW2Extensions(r io.ReaderAt, at uint64) (string, error) {
	for end := at + qcow2MaxExtensions; at < end; {
		var e [8]byte
		if _, err := r.ReadAt(e[:], int64(at)); err != nil {
			return "", fmt.Errorf("header extension at %d: %w", at, err)
		}
		typ, n := binary.BigEndian.Uint32(e[0:]), binary.BigEndian.Uint32(e[4:])
		switch {
		case typ == qcow2EndOfExt:
			return "", nil
		case typ == qcow2BackingFormat && n <= 64:
			b := make([]byte, n)
			if _, err := r.ReadAt(b, int64(at+8)); err != nil {
				return "", fmt.Errorf("backing format: %w", err)
			}
			return string(b), nil
		}
		at += 8 + (uint64(n)+7)&^7
	}
	return "", nil
}
