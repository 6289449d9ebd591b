package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cloudlet/cloudlet/base"
)

// BlobReader reads a blob by ranges, reporting a read's progress as its bytes arrive
// (progress(n): p[:n] is filled); its errors name the blob. synthesis/origin's registry blobs are BlobReaders: a read
// that gets no byte for its idle timeout is retried from the byte it stopped at, for as long
// as attempts make progress.
type BlobReader interface {
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error
	Close() error
}

// OpenBlob opens blob desc of ref's repository, which must have desc's size.
type OpenBlob func(ctx context.Context, ref Ref, desc ocispec.Descriptor) (BlobReader, error)

// pullStep is the most one read of a pulled blob asks for: what a read that failed had
// received is fetched again, and each read is one range request.
const pullStep = 4 << 20

// errDigest is a downloaded blob whose bytes do not have its digest.
var errDigest = errors.New("digest mismatch")

// download fetches a blob into path, resuming after the bytes path already has, and checks
// the whole file's digest. A file whose digest is wrong is removed, so that the next pull
// starts it afresh.
func download(ctx context.Context, open OpenBlob, ref Ref, desc ocispec.Descriptor, path string, p base.Progress) error {
	p = base.OrNone(p)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	have := st.Size()
	if have > desc.Size {
		have = 0
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, have)); err != nil {
		return err
	}
	if have < desc.Size {
		if have, err = fetchRest(ctx, open, ref, desc, f, have, h, p); err != nil {
			return err
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != desc.Digest.Encoded() {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("blob %s: %w: got sha256 %s over %d bytes", desc.Digest, errDigest, got, have)
	}
	return f.Sync()
}

// fetchRest appends the blob's bytes from have on to f and h, and returns the new length.
func fetchRest(ctx context.Context, open OpenBlob, ref Ref, desc ocispec.Descriptor, f *os.File, have int64, h hash.Hash, p base.Progress) (int64, error) {
	r, err := open(ctx, ref, desc)
	if err != nil {
		return have, explain(err)
	}
	defer r.Close()
	if err := f.Truncate(have); err != nil {
		return have, err
	}
	p.Begin("pull "+desc.Annotations[ocispec.AnnotationTitle], desc.Size)
	defer p.End()
	p.Add(have)
	buf := make([]byte, min(pullStep, desc.Size-have))
	for have < desc.Size {
		b := buf[:min(int64(len(buf)), desc.Size-have)]
		shown := 0
		err := r.ReadAtProgress(ctx, b, have, func(n int) {
			p.Add(int64(n - shown))
			shown = n
		})
		if err != nil {
			return have, fmt.Errorf("after %d of %d bytes: %w", have, desc.Size, err)
		}
		if _, err := base.WriteSparse(ctx, f, have, bytes.NewReader(b), h, nil); err != nil {
			return have, err
		}
		have += int64(len(b))
	}
	// The zero chunks at the end were not written.
	return have, f.Truncate(have)
}
