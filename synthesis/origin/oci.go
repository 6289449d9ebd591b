package origin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/registry"
)

// OCIOptions say how oci:// sources are read.
type OCIOptions struct {
	Registry registry.Options
	// FullDownload makes a registry (or its blob storage) that does not answer range requests
	// work anyway: the whole blob is downloaded into a file in SpoolDir ("" is the system's
	// temporary directory) and its digest checked before the synthesis starts. Without it,
	// such a registry is an error that says so.
	FullDownload bool
	SpoolDir     string
}

// resolveTimeout bounds the resolution of a reference (a manifest, perhaps a token first).
const resolveTimeout = 60 * time.Second

// openOCI resolves an overlay artifact and reads its blob by range requests through an HTTP
// origin that starts every request at the registry's blob URL, with the registry's auth. The
// blob is pinned by digest: the overlay's header must carry the ID the manifest's annotation
// names, and the header pins the index, whose digests pin every chunk.
func openOCI(ctx context.Context, src string, opts HTTPOptions) (Origin, error) {
	ref, err := registry.ParseRef(src)
	if err != nil {
		return nil, fmt.Errorf("overlay source: %w", err)
	}
	name := registry.Scheme + ref.String()
	ropts := opts.OCI.Registry
	if ropts.Transport != nil && opts.Guard != nil {
		return nil, fmt.Errorf("overlay %s: a guard needs the origin's own transport, not a given one", name)
	}
	if ropts.Transport == nil {
		// With a guard, every connection (registry, token realm, blob storage) is checked.
		ropts.Transport = newHTTPClient(opts.Guard).Transport
	}
	rctx, cancel := context.WithTimeout(ctx, cmp.Or(opts.AttemptTimeout, resolveTimeout))
	ov, err := registry.ResolveOverlay(rctx, ref, ropts, checkRedirect)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", name, registryError(err, opts.Guard != nil))
	}
	o, err := openBlob(ctx, ov.URL, ov.Client, name, opts)
	switch {
	case errors.Is(err, ErrNoRanges) && opts.OCI.FullDownload:
		o, err = downloadBlob(ctx, ov, name, opts.OCI.SpoolDir, cmp.Or(opts.IdleTimeout, defaultIdleTimeout))
		if err != nil {
			return nil, err
		}
	case errors.Is(err, ErrNoRanges):
		return nil, fmt.Errorf("overlay %s: the registry does not answer range requests, so the overlay cannot be read lazily "+
			"(--oci-full-download downloads it whole before the VM starts): %w", name, err)
	case err != nil:
		return nil, fmt.Errorf("overlay %s: %w", name, err)
	}
	if err := checkBlob(ctx, o, ov); err != nil {
		o.Close()
		return nil, fmt.Errorf("overlay %s: %w", name, err)
	}
	return o, nil
}

// checkBlob holds the blob to its manifest: the size it has there, and the overlay ID of its
// annotation in its header.
func checkBlob(ctx context.Context, o Origin, ov *registry.Overlay) error {
	if o.Size() != ov.Blob.Size {
		return fmt.Errorf("blob %s has %d bytes, the manifest says %d", ov.Blob.Digest, o.Size(), ov.Blob.Size)
	}
	if o.Size() < overlay.HeaderSize {
		return fmt.Errorf("blob %s of %d bytes is too short for an overlay", ov.Blob.Digest, o.Size())
	}
	head := make([]byte, overlay.HeaderSize)
	if err := o.ReadAt(ctx, head, 0); err != nil {
		return err
	}
	id, err := overlay.HeaderID(head, o.Size())
	if err != nil {
		return fmt.Errorf("blob %s: %w", ov.Blob.Digest, err)
	}
	if id != ov.OverlayID {
		return fmt.Errorf("blob %s holds overlay %s, the manifest's annotation says %s", ov.Blob.Digest, id, ov.OverlayID)
	}
	return nil
}

// statusError is statusError for this origin: after a redirect, a refusal is taken for an
// expired presigned URL and retried, since each attempt asks the registry for a fresh one.
func (o *httpOrigin) statusError(resp *http.Response) error {
	err := statusError(resp)
	if err == nil || !o.opts.retryDenied || resp.Request == nil || resp.Request.URL.String() == o.url {
		return err
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusGone:
		return &StatusError{Code: resp.StatusCode}
	}
	return err
}

// registryError is err as a stranger may see it: with a guard, the registry's own words (its
// error messages, the manifest's strings) are not quoted, only what kind of failure it was.
func registryError(err error, stranger bool) error {
	if !stranger {
		return err
	}
	var refused *netguard.RefusedError
	var resp *errcode.ErrorResponse
	switch {
	case errors.As(err, &refused):
		return refused
	case errors.Is(err, errdef.ErrNotFound):
		return &cleanError{"not found in the registry", err}
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return &cleanError{"the registry wants credentials this cloudlet does not have", err}
	case errors.As(err, &resp):
		if resp.StatusCode == http.StatusNotFound {
			return &cleanError{"not found in the registry", err}
		}
		return &cleanError{"the registry answered " + statusText(resp.StatusCode), err}
	case errors.Is(err, registry.ErrBadArtifact):
		return &cleanError{"the reference is not a valid cloudlet overlay artifact", err}
	}
	return transportError(err)
}

// downloadBlob fetches the whole blob into a spool file in the background, for a registry
// that does not answer range requests. Reads wait for the download to pass their range; the
// blobs are in prefetch order, so the working set comes first and early start still pays.
// The blob's size and digest are checked at its end, before a read of its last byte returns.
// A download that gets no byte for idle fails, and with it the reads that wait for it.
func downloadBlob(ctx context.Context, ov *registry.Overlay, name, dir string, idle time.Duration) (Origin, error) {
	f, err := os.CreateTemp(dir, "overlay-*.spool")
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", name, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ov.URL, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = ov.Client.Do(req); err != nil {
			err = transportError(err)
		} else if err = statusError(resp); err != nil {
			resp.Body.Close()
		} else {
			dctx, cancel := context.WithCancel(ctx)
			b := &streamedBlob{f: f, size: ov.Blob.Size, digest: ov.Blob.Digest.Encoded(), name: name, idle: idle, cancel: cancel, done: make(chan struct{})}
			go b.fetch(dctx, resp.Body)
			return b, nil
		}
	}
	f.Close()
	os.Remove(f.Name())
	return nil, fmt.Errorf("overlay %s: full download: %w", name, err)
}

// streamedBlob is a blob being downloaded whole into a spool file, removed when closed.
type streamedBlob struct {
	f      *os.File
	size   int64
	digest string
	name   string
	idle   time.Duration
	cancel context.CancelFunc
	done   chan struct{} // closed when fetch has ended; err is set then
	have   atomic.Int64  // bytes in the file
	err    error
}

func (b *streamedBlob) fetch(ctx context.Context, body io.ReadCloser) {
	defer close(b.done)
	defer body.Close()
	stop := context.AfterFunc(ctx, func() { body.Close() })
	defer stop()
	w := newWatchdog(b.cancel)
	defer w.stop()
	w.arm(b.idle, "no data")
	h := sha256.New()
	buf := make([]byte, 256<<10)
	r := io.LimitReader(body, b.size+1)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			if _, werr := b.f.WriteAt(buf[:n], b.have.Load()); werr != nil {
				b.err = werr
				return
			}
			b.have.Add(int64(n))
			w.arm(b.idle, "no data")
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.err = w.explain(transportError(err))
			return
		}
	}
	if got := b.have.Load(); got != b.size {
		b.err = fmt.Errorf("the registry sent %d bytes, the manifest says %d", got, b.size)
	} else if got := hex.EncodeToString(h.Sum(nil)); got != b.digest {
		b.err = fmt.Errorf("got sha256 %s, want %s", got, b.digest)
	}
}

// ReadAt waits until the download has passed [off, off+len(p)), or for its end when that
// range ends the blob.
func (b *streamedBlob) ReadAt(ctx context.Context, p []byte, off int64) error {
	want := off + int64(len(p))
	if off < 0 || want > b.size {
		return fmt.Errorf("%s: bytes %d+%d beyond its %d", b.name, off, len(p), b.size)
	}
	for {
		select {
		case <-b.done:
			if b.err != nil {
				return fmt.Errorf("%s: full download: %w", b.name, b.err)
			}
		default:
			if b.have.Load() < want || want == b.size {
				select {
				case <-ctx.Done():
					return fmt.Errorf("%s: waiting for bytes %d+%d: %w", b.name, off, len(p), ctx.Err())
				case <-b.done:
				case <-time.After(spoolPoll):
				}
				continue
			}
		}
		_, err := b.f.ReadAt(p, off)
		return err
	}
}

func (b *streamedBlob) Size() int64    { return b.size }
func (b *streamedBlob) String() string { return b.name }

func (b *streamedBlob) Close() error {
	b.cancel()
	<-b.done
	err := b.f.Close()
	os.Remove(b.f.Name())
	return err
}
