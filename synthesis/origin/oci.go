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
	// MaxSize, if positive, refuses a blob that the manifest says is larger, before any of
	// it is fetched.
	MaxSize int64
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
	if max := opts.OCI.MaxSize; max > 0 && ov.Blob.Size > max {
		return nil, fmt.Errorf("overlay %s: blob of %d bytes, over the limit of %d", name, ov.Blob.Size, max)
	}
	hopts := opts
	hopts.Client, hopts.Guard, hopts.retryDenied = ov.Client, nil, true
	o, err := NewHTTP(ctx, ov.URL, hopts)
	switch {
	case errors.Is(err, ErrNoRanges) && opts.OCI.FullDownload:
		o, err = downloadBlob(ctx, ov, name, opts.OCI.SpoolDir)
		if err != nil {
			return nil, err
		}
	case errors.Is(err, ErrNoRanges):
		return nil, fmt.Errorf("overlay %s: the registry does not answer range requests, so the overlay cannot be read lazily "+
			"(--oci-full-download downloads it whole before the VM starts): %w", name, err)
	case err != nil:
		return nil, fmt.Errorf("overlay %s: %w", name, err)
	default:
		h := o.(*httpOrigin)
		// A blob fetched by digest cannot change, and blob storage behind a redirect may answer
		// each request with other validators: the digest pins it, not an ETag.
		h.validator, h.byETag, h.name = "", false, name
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

// downloadBlob fetches the whole blob into a spool file, checking its size and digest, for a
// registry that does not answer range requests.
func downloadBlob(ctx context.Context, ov *registry.Overlay, name, dir string) (Origin, error) {
	f, err := os.CreateTemp(dir, "overlay-*.spool")
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", name, err)
	}
	if err := fetchWhole(ctx, ov, f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("overlay %s: full download: %w", name, err)
	}
	return &spooledBlob{fileOrigin: fileOrigin{f: f, size: ov.Blob.Size}, name: name}, nil
}

func fetchWhole(ctx context.Context, ov *registry.Overlay, f *os.File) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ov.URL, nil)
	if err != nil {
		return err
	}
	resp, err := ov.Client.Do(req)
	if err != nil {
		return transportError(err)
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, ov.Blob.Size+1))
	if err != nil {
		return transportError(err)
	}
	if n != ov.Blob.Size {
		return fmt.Errorf("got %d bytes, want %d", n, ov.Blob.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ov.Blob.Digest.Encoded() {
		return fmt.Errorf("blob %s: got sha256 %s", ov.Blob.Digest, got)
	}
	return nil
}

// spooledBlob is a fully downloaded blob, removed when closed.
type spooledBlob struct {
	fileOrigin
	name string
}

func (s *spooledBlob) String() string { return s.name }
func (s *spooledBlob) Close() error {
	err := s.f.Close()
	os.Remove(s.f.Name())
	return err
}
