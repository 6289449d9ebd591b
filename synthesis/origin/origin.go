// Package origin serves an overlay's bytes to a synthesis from where they are: a local file,
// an HTTP(S) server that answers range requests (behind a guard that keeps strangers' URLs
// out of the cloudlet's own network, and with errors that quote nothing the upstream sent),
// or an upload still in progress. ShapedServer is a loopback origin with a link emulator and
// fault switches, for tests and benchmarks.
package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/registry"
)

// Origin is where an overlay's bytes come from: a local file or an HTTP(S) server that
// answers range requests. ReadAt fills p completely or fails.
type Origin interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	Size() int64
	String() string
	Close() error
}

// ErrChanged means the overlay behind a URL changed while it was read: its ETag or
// Last-Modified no longer matches the first answer. Never retried: mixing two files' bytes is
// what it prevents.
var ErrChanged = errors.New("the overlay changed on the server while it was being read")

// ErrNoRanges means the server answered a range request with the whole file.
var ErrNoRanges = errors.New("no range support")

// Open opens a local file, an http:// or https:// URL, or an oci:// artifact reference.
func Open(ctx context.Context, src string, opts HTTPOptions) (Origin, error) {
	if strings.HasPrefix(src, registry.Scheme) {
		return openOCI(ctx, src, opts)
	}
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		return NewHTTP(ctx, src, opts)
	}
	if strings.Contains(src, "://") {
		return nil, fmt.Errorf("overlay source %q: want a file, an http(s) URL or an oci:// reference", src)
	}
	f, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	return &fileOrigin{f: f, size: st.Size()}, nil
}

type fileOrigin struct {
	f    *os.File
	size int64
}

func (o *fileOrigin) ReadAt(ctx context.Context, p []byte, off int64) error {
	_, err := o.f.ReadAt(p, off)
	if err != nil {
		return fmt.Errorf("%s: read %d bytes at %d: %w", o.f.Name(), len(p), off, err)
	}
	return nil
}
func (o *fileOrigin) Size() int64    { return o.size }
func (o *fileOrigin) String() string { return o.f.Name() }
func (o *fileOrigin) Close() error   { return o.f.Close() }

// defaultIdleTimeout is how long a read waits for the next byte of an answer by default.
const defaultIdleTimeout = 30 * time.Second

// HTTPOptions tune an HTTP origin.
type HTTPOptions struct {
	Client *http.Client // nil: a client with sane timeouts
	// AttemptTimeout bounds the wait for an answer's headers, IdleTimeout the wait for each
	// next byte of its body: a slow but steady answer goes on as long as it needs.
	AttemptTimeout time.Duration
	IdleTimeout    time.Duration
	// RetryFor bounds the retries of a read that makes no progress: any attempt that brought
	// bytes starts the budget again, so a flaky but moving link finishes.
	RetryFor time.Duration
	// Guard, if set, refuses origins whose address (after DNS, after each redirect) it does
	// not allow. The server sets it for URLs its clients give; it needs the default Client.
	Guard *netguard.Guard
	// OCI says how oci:// sources reach their registry.
	OCI OCIOptions

	// retryDenied retries 401, 403, 404 and 410 answered after a redirect: an expired
	// presigned URL of a registry's blob storage (each attempt starts at the registry).
	retryDenied bool
}

type httpOrigin struct {
	url       string
	name      string // url without its query, for errors: a presigned URL's query is a secret
	client    *http.Client
	size      int64
	validator string // the ETag, or else Last-Modified, pinned at open
	byETag    bool
	head      []byte // the file's first bytes, which came with the probe
	opts      HTTPOptions
}

// headBytes is what the probe asks for: a reader's first read (the header, and a small
// overlay's index) comes with the answer that tells the size, in the same round trip.
const headBytes = 16 << 10

// checkURL parses rawURL as a request URI and as requests will (url.Parse, which refuses a bad
// escape in a fragment that the other lets through). A parse error's own message quotes the
// whole URL, secrets in its query included: only its reason is kept.
func checkURL(rawURL string) error {
	_, err := url.ParseRequestURI(rawURL)
	if err == nil {
		_, err = url.Parse(rawURL)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err
}

// NewHTTP asks the server for the overlay's size and validator. It needs a server that
// answers range requests (any static server, S3 and presigned URLs do).
func NewHTTP(ctx context.Context, rawURL string, opts HTTPOptions) (Origin, error) {
	name := redactURL(rawURL)
	if err := checkURL(rawURL); err != nil {
		return nil, fmt.Errorf("overlay URL %s: %w", name, err)
	}
	if opts.Client != nil && opts.Guard != nil {
		return nil, fmt.Errorf("overlay URL %s: a guard needs the origin's own HTTP client, not a given one", name)
	}
	if opts.Client == nil {
		opts.Client = newHTTPClient(opts.Guard)
	}
	if opts.AttemptTimeout == 0 {
		opts.AttemptTimeout = 60 * time.Second
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.RetryFor == 0 {
		opts.RetryFor = 2 * time.Minute
	}
	o := &httpOrigin{url: rawURL, name: name, client: opts.Client, opts: opts}
	// One range request tells size, validator and range support, and brings the first bytes.
	err := o.retry(ctx, "probe", noProgress, func(actx context.Context, w *watchdog) error {
		req, err := http.NewRequestWithContext(actx, http.MethodGet, rawURL, nil)
		if err != nil {
			return backoff.Permanent(err)
		}
		req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", headBytes-1))
		resp, err := o.client.Do(req)
		if err != nil {
			return w.explain(transportError(err))
		}
		defer resp.Body.Close()
		if err := o.statusError(resp); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusPartialContent {
			return backoff.Permanent(fmt.Errorf("%w: got %s, want 206 Partial Content", ErrNoRanges, statusText(resp.StatusCode)))
		}
		size, err := totalSize(resp.Header.Get("Content-Range"))
		if err != nil {
			return backoff.Permanent(err)
		}
		o.size = size
		w.arm(o.opts.IdleTimeout, "no data")
		// A shorter answer is a shorter head, not an error: later reads ask for the rest.
		head := make([]byte, min(size, headBytes))
		n, _ := io.ReadFull(resp.Body, head)
		o.head = head[:n]
		if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
			o.validator, o.byETag = et, true
		} else {
			o.validator = resp.Header.Get("Last-Modified")
		}
		return nil
	})
	if err != nil {
		o.Close() // a kept-alive connection would outlive the failed open
		return nil, err
	}
	return o, nil
}

func (o *httpOrigin) Size() int64    { return o.size }
func (o *httpOrigin) String() string { return o.name }
func (o *httpOrigin) Close() error   { o.client.CloseIdleConnections(); return nil }

// totalSize reads the size from "bytes 0-0/12345".
func totalSize(contentRange string) (int64, error) {
	_, total, ok := strings.Cut(contentRange, "/")
	n, err := strconv.ParseInt(total, 10, 64)
	if !ok || err != nil || n <= 0 {
		return 0, errors.New("no usable size in the answer's Content-Range")
	}
	return n, nil
}

// ReaderAt adapts o to io.ReaderAt (for overlay.Open), every read under ctx.
func ReaderAt(ctx context.Context, o Origin) io.ReaderAt { return readerAt{ctx, o} }

type readerAt struct {
	ctx context.Context
	o   Origin
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.o.Size() {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.o.Size()-off)
	if err := r.o.ReadAt(r.ctx, p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
