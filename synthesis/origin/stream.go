package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// ProgressReader is an origin that reports a read's progress as its bytes arrive, so that a
// caller can use the start of a long range before its end is in.
type ProgressReader interface {
	// ReadAtProgress is ReadAt that calls progress(n) whenever p[:n] is filled (n grows; it
	// may be called from the reading goroutine only, never concurrently).
	ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error
}

// ReadProgress reads with progress from any origin: those that cannot report it report the
// whole read at its end.
func ReadProgress(ctx context.Context, o Origin, p []byte, off int64, progress func(n int)) error {
	if pr, ok := o.(ProgressReader); ok {
		return pr.ReadAtProgress(ctx, p, off, progress)
	}
	if err := o.ReadAt(ctx, p, off); err != nil {
		return err
	}
	progress(len(p))
	return nil
}

// readStep is the most one body read takes before progress is reported.
const readStep = 64 << 10

// ReadAt fetches [off, off+len(p)) with range requests.
func (o *httpOrigin) ReadAt(ctx context.Context, p []byte, off int64) error {
	return o.ReadAtProgress(ctx, p, off, func(int) {})
}

// ReadAtProgress fetches [off, off+len(p)) with range requests, reporting bytes as they
// arrive. A dropped or stalled connection resumes from the last byte received; server errors
// and timeouts are retried with backoff for as long as attempts make progress.
func (o *httpOrigin) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	if off+int64(len(p)) <= int64(len(o.head)) {
		copy(p, o.head[off:])
		progress(len(p))
		return nil
	}
	done := 0
	return o.retry(ctx, fmt.Sprintf("range %d+%d", off, len(p)), func() int { return done }, func(actx context.Context, w *watchdog) error {
		resp, err := o.rangeRequest(actx, off+int64(done), off+int64(len(p)))
		if err != nil {
			return w.explain(err)
		}
		defer resp.Body.Close()
		w.arm(o.opts.IdleTimeout, "no data")
		for done < len(p) {
			n, err := resp.Body.Read(p[done:min(len(p), done+readStep)])
			if n > 0 {
				w.arm(o.opts.IdleTimeout, "no data")
				done += n
				progress(done)
			}
			if err != nil && done < len(p) {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return w.explain(transportError(err)) // a short body resumes at done
			}
		}
		return nil
	})
}

// rangeRequest asks for [start, end) and checks the answer's status, validator and range.
func (o *httpOrigin) rangeRequest(ctx context.Context, start, end int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.url, nil)
	if err != nil {
		return nil, backoff.Permanent(err)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end-1))
	if o.byETag {
		req.Header.Set("If-Match", o.validator)
	} else if o.validator != "" {
		req.Header.Set("If-Unmodified-Since", o.validator)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return nil, transportError(err)
	}
	if err := o.checkRange(resp, start); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

func (o *httpOrigin) checkRange(resp *http.Response, start int64) error {
	if resp.StatusCode == http.StatusPreconditionFailed {
		return backoff.Permanent(ErrChanged)
	}
	if err := o.statusError(resp); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusPartialContent {
		return backoff.Permanent(fmt.Errorf("range request answered with %s, want 206 Partial Content", statusText(resp.StatusCode)))
	}
	// The validator is checked on every answer too: a server that ignores If-Match must not
	// slip a new file in.
	if o.byETag && resp.Header.Get("ETag") != o.validator || !o.byETag && o.validator != "" && resp.Header.Get("Last-Modified") != o.validator {
		return backoff.Permanent(ErrChanged)
	}
	if got := resp.Header.Get("Content-Range"); !strings.HasPrefix(got, fmt.Sprintf("bytes %d-", start)) {
		return backoff.Permanent(fmt.Errorf("asked for bytes from %d, got a Content-Range that does not start there", start))
	}
	return nil
}

func noProgress() int { return 0 }

// retry runs op until it succeeds or fails permanently, or until RetryFor passes without an
// attempt that moved progress(). Each attempt runs under a watchdog: AttemptTimeout until op
// re-arms it (for the body, with IdleTimeout).
func (o *httpOrigin) retry(ctx context.Context, what string, progress func() int, op func(context.Context, *watchdog) error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	b.Reset() // the intervals above take effect from here
	mark, since := progress(), time.Now()
	for attempts := 1; ; attempts++ {
		actx, cancel := context.WithCancel(ctx)
		w := newWatchdog(cancel)
		w.arm(o.opts.AttemptTimeout, "no answer")
		err := op(actx, w)
		w.stop()
		cancel()
		if err == nil {
			return nil
		}
		var perm *backoff.PermanentError
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.As(err, &perm):
			err = perm.Err
		default:
			if n := progress(); n > mark {
				mark, since = n, time.Now()
				b.Reset()
			}
			wait := b.NextBackOff()
			if time.Since(since)+wait <= o.opts.RetryFor {
				select {
				case <-time.After(wait):
					continue
				case <-ctx.Done():
					err = ctx.Err()
				}
			} else {
				err = fmt.Errorf("%w; no progress for %v", err, time.Since(since).Round(time.Millisecond))
			}
		}
		return fmt.Errorf("%s: %s: %w (after %d attempts)", o.name, what, err, attempts)
	}
}

// watchdog cancels an attempt that waits too long: for an answer, then for each next byte.
type watchdog struct {
	cancel context.CancelFunc

	mu     sync.Mutex
	timer  *time.Timer
	fired  string // guarded by mu: what it waited for when it fired
	limit  time.Duration
	what   string
	killed bool
}

func newWatchdog(cancel context.CancelFunc) *watchdog { return &watchdog{cancel: cancel} }

// arm (re)starts the countdown: d without what it waits for ends the attempt.
func (w *watchdog) arm(d time.Duration, what string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.killed {
		return
	}
	w.limit, w.what = d, what
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.fire)
		return
	}
	w.timer.Reset(d)
}

func (w *watchdog) fire() {
	w.mu.Lock()
	w.fired = fmt.Sprintf("%s for %v", w.what, w.limit)
	w.killed = true
	w.mu.Unlock()
	w.cancel()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.killed = true
	if w.timer != nil {
		w.timer.Stop()
	}
}

// explain names the timeout when the watchdog ended the attempt: the error the client saw is
// only "context canceled". Such an attempt is retried.
func (w *watchdog) explain(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired != "" {
		// Not wrapping err: that is context.Canceled, which callers take for their own cancel.
		return &cleanError{"timed out: " + w.fired, nil}
	}
	return err
}
