package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QMPError is an error answer from QEMU's monitor; Desc is QEMU's own message.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// qmp is a minimal synchronous QMP client. Commands are serialised; events that arrive
// between them are dropped, since the driver polls state instead of following events.
type qmp struct {
	mu   sync.Mutex // serialises commands and guards r
	conn *net.UnixConn
	r    *bufio.Reader
}

// dialQMP connects, reads the greeting and enters command mode.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	q := &qmp{conn: c.(*net.UnixConn), r: bufio.NewReaderSize(c, 64<<10)}
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Now()) })
	defer stop()
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := q.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err != nil || greeting.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %q: %w", line, errors.Join(err, ctx.Err()))
	}
	if err := q.execute(ctx, "qmp_capabilities", nil, nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) Close() error { return q.conn.Close() }

// Execute runs one command and decodes its return value into out (if not nil).
func (q *qmp) Execute(ctx context.Context, cmd string, args, out any) error {
	return q.execute(ctx, cmd, args, out, nil)
}

// SendFD passes an open file to QEMU under name over the monitor socket.
func (q *qmp) SendFD(ctx context.Context, name string, f *os.File) error {
	return q.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, f)
}

func (q *qmp) execute(ctx context.Context, cmd string, args, out any, fd *os.File) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Now()) })
	defer stop()
	defer q.conn.SetDeadline(time.Time{})

	req, err := qmpRequest(cmd, args)
	if err != nil {
		return err
	}
	req = append(req, '\n')
	if fd != nil {
		_, _, err = q.conn.WriteMsgUnix(req, unix.UnixRights(int(fd.Fd())), nil)
	} else {
		_, err = q.conn.Write(req)
	}
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, ctx.Err()))
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("qmp %s: monitor connection: %w", cmd, errors.Join(err, ctx.Err()))
		}
		if done, err := decodeReply(cmd, line, out); done {
			return err
		}
	}
}

func qmpRequest(cmd string, args any) ([]byte, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return b, nil
}

// decodeReply reads one monitor message: an answer to cmd (done), or an event to skip.
func decodeReply(cmd string, line []byte, out any) (done bool, err error) {
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return true, fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
	}
	switch {
	case resp.Error != nil:
		return true, &QMPError{Command: cmd, Class: resp.Error.Class, Desc: resp.Error.Desc}
	case resp.Return != nil:
		if out == nil {
			return true, nil
		}
		if err := json.Unmarshal(resp.Return, out); err != nil {
			return true, fmt.Errorf("qmp %s: decode %q: %w", cmd, resp.Return, err)
		}
		return true, nil
	}
	return false, nil // an event
}

// migrationStatus is the part of query-migrate the driver needs.
type migrationStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the migration completes or fails. Polling (rather
// than events) keeps the client simple; a 10 ms period adds no visible latency.
func waitMigration(ctx context.Context, q monitor) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var st migrationStatus
		if err := q.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			desc := st.ErrorDesc
			if desc == "" {
				desc = "no reason given"
			}
			return fmt.Errorf("migration %s: %s", st.Status, desc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration: %w", ctx.Err())
		case <-tick.C:
		}
	}
}
