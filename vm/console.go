package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
)

// maxConsoleBuffer bounds the serial output kept in memory; older output is dropped (the
// full log still goes to the console's log writer).
const maxConsoleBuffer = 8 << 20

// Console is the guest's serial port: it keeps what the guest printed, so callers can wait for
// text, and sends keystrokes to the guest shell.
type Console struct {
	conn net.Conn
	log  io.Writer // fixed after construction; may be nil

	mu      sync.Mutex
	buf     []byte // output, starting at absolute offset dropped
	dropped int
	changed chan struct{} // closed and replaced on each new output or at EOF
	eof     error

	seq atomic.Int64 // numbers Run markers
}

func newConsole(conn net.Conn, log io.Writer) *Console {
	c := &Console{conn: conn, log: log, changed: make(chan struct{})}
	go c.readLoop()
	return c
}

func (c *Console) readLoop() {
	b := make([]byte, 32<<10)
	for {
		n, err := c.conn.Read(b)
		c.mu.Lock()
		if n > 0 {
			if c.log != nil {
				c.log.Write(b[:n])
			}
			c.buf = append(c.buf, b[:n]...)
			if over := len(c.buf) - maxConsoleBuffer; over > 0 {
				c.buf = append(c.buf[:0:0], c.buf[over:]...)
				c.dropped += over
			}
		}
		if err != nil {
			c.eof = fmt.Errorf("serial console closed: %w", err)
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Offset is the absolute position of the end of the output so far, for Expect.
func (c *Console) Offset() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped + len(c.buf)
}

// Tail returns the last n bytes of output, for error messages.
func (c *Console) Tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf[max(0, len(c.buf)-n):])
}

// Expect waits until output from absolute offset from on matches re, and returns the match's
// submatches and the offset just past it.
func (c *Console) Expect(ctx context.Context, from int, re *regexp.Regexp) ([]string, int, error) {
	for {
		c.mu.Lock()
		start := max(0, from-c.dropped)
		if start > len(c.buf) {
			start = len(c.buf)
		}
		window := c.buf[start:]
		loc := re.FindSubmatchIndex(window)
		eof, changed := c.eof, c.changed
		var subs []string
		end := 0
		if loc != nil {
			for i := 0; i < len(loc); i += 2 {
				if loc[i] >= 0 {
					subs = append(subs, string(window[loc[i]:loc[i+1]]))
				} else {
					subs = append(subs, "")
				}
			}
			end = c.dropped + start + loc[1]
		}
		c.mu.Unlock()
		if loc != nil {
			return subs, end, nil
		}
		if eof != nil {
			return nil, 0, fmt.Errorf("waiting for %q: %w", re, eof)
		}
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("waiting for %q on the serial console: %w", re, context.Cause(ctx))
		case <-changed:
		}
	}
}

// WaitFor waits until text appears anywhere in the output since boot.
func (c *Console) WaitFor(ctx context.Context, text string) error {
	_, _, err := c.Expect(ctx, 0, regexp.MustCompile(regexp.QuoteMeta(text)))
	return err
}

// Copy writes the guest's output from now on to w, until ctx ends or the console closes.
func (c *Console) Copy(ctx context.Context, w io.Writer) {
	off := c.Offset()
	for {
		c.mu.Lock()
		start := min(max(0, off-c.dropped), len(c.buf))
		data := append([]byte(nil), c.buf[start:]...)
		off = c.dropped + len(c.buf)
		eof, changed := c.eof, c.changed
		c.mu.Unlock()
		if len(data) > 0 {
			w.Write(data)
		}
		if eof != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Write sends raw input to the guest.
func (c *Console) Write(p []byte) (int, error) { return c.conn.Write(p) }

// Run types cmd into the guest shell and waits for it to finish. It returns what the command
// printed and its exit status. The shell must be at a prompt on the serial port.
func (c *Console) Run(ctx context.Context, cmd string) (output string, status int, err error) {
	n := c.seq.Add(1)
	// The marker is split by quotes in what we type, so the shell's echo of the command line
	// never matches; only the executed echo prints it whole.
	tag := fmt.Sprintf("__cloudlet_done_%d__", n)
	start := fmt.Sprintf("__cloudlet_start_%d__", n)
	typed := fmt.Sprintf("echo '%s''%s'; %s; echo '%s''%s'$?\n", start[:9], start[9:], cmd, tag[:9], tag[9:])
	from := c.Offset()
	if _, err := c.Write([]byte(typed)); err != nil {
		return "", -1, fmt.Errorf("serial console: send %q: %w", cmd, err)
	}
	_, afterStart, err := c.Expect(ctx, from, regexp.MustCompile(regexp.QuoteMeta(start)+`\r?\n`))
	if err != nil {
		return "", -1, err
	}
	m, _, err := c.Expect(ctx, afterStart, regexp.MustCompile(`(?s)^(.*?)`+regexp.QuoteMeta(tag)+`(\d+)`))
	if err != nil {
		return "", -1, err
	}
	status, _ = strconv.Atoi(m[2])
	out := bytes.ReplaceAll([]byte(m[1]), []byte("\r\n"), []byte("\n"))
	return string(out), status, nil
}

// Close stops reading the console.
func (c *Console) Close() error { return c.conn.Close() }
