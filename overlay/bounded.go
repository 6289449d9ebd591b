package overlay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
)

// readAtRuns reads n bytes at off in runs of at most readRun bytes. The buffer grows as bytes
// arrive (doubling, so a long read copies little): a claimed length that the file does not
// hold costs one run, never an allocation of the claimed size.
func readAtRuns(ra io.ReaderAt, off, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, readRun))
	for int64(len(buf)) < n {
		k := int(min(n-int64(len(buf)), readRun))
		if cap(buf)-len(buf) < k {
			buf = slices.Grow(buf, max(k, len(buf)))
		}
		got, err := ra.ReadAt(buf[len(buf):len(buf)+k], off+int64(len(buf)))
		buf = buf[:len(buf)+got]
		if got == k {
			continue
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("got %d of %d bytes at %d: %w", len(buf), n, off, err)
	}
	return buf, nil
}

// runReader reads [off, off+n) of ra sequentially, in runs of at most readRun bytes: a
// streaming decoder over it holds one run of input, not the whole claimed length.
func runReader(ra io.ReaderAt, off, n int64) io.Reader {
	return bufio.NewReaderSize(io.NewSectionReader(ra, off, n), int(max(16, min(n, readRun))))
}

// errTooLong marks decoded data longer than its declared size.
var errTooLong = errors.New("more bytes than declared")

// readExactly reads exactly n bytes from r and fails if r has more: decoded data that
// inflates past its declared size is corrupt (or hostile) and never gets the memory it asks
// for. The buffer grows as bytes arrive, from one run.
func readExactly(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, readRun))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, int(min(int64(len(buf)), n-int64(len(buf)))))
		}
		k, err := r.Read(buf[len(buf):min(int64(cap(buf)), n)])
		buf = buf[:len(buf)+k]
		if err != nil && int64(len(buf)) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("%d of %d bytes: %w", len(buf), n, err)
		}
	}
	var one [1]byte
	for range 16 { // a reader may return nothing without an error, but not forever
		k, err := r.Read(one[:])
		if k > 0 {
			return nil, fmt.Errorf("%w (%d)", errTooLong, n)
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("no end after %d bytes", n)
}
