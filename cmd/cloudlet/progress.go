package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/cloudlet/cloudlet/base"
)

// termProgress draws long steps as a bar on a terminal; piped output stays quiet.
type termProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

// newProgress returns a bar on w when w is a terminal, and nil (no progress) otherwise.
func newProgress(w io.Writer) base.Progress {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &termProgress{w: w}
}

func (p *termProgress) Begin(label string, total int64) {
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(label),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

func (p *termProgress) Add(n int64) {
	if p.bar != nil {
		p.bar.Add64(n)
	}
}

func (p *termProgress) End() {
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
}

// isTerminal reports whether r is an interactive terminal (for "press Enter" prompts).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
