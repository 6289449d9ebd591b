package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/vm"
)

// Dir is one session's directory.
type Dir string

func (d Dir) path(name string) string { return filepath.Join(string(d), name) }

// ID is the session's ID: the directory's name.
func (d Dir) ID() string { return filepath.Base(string(d)) }

func (d Dir) requestFile() string  { return d.path("request.json") }
func (d Dir) timelineFile() string { return d.path("timeline.jsonl") }
func (d Dir) stateFile() string    { return d.path("state.json") }
func (d Dir) mountFile() string    { return d.path("mountpoint") }

// Socket is the supervisor's control socket.
func (d Dir) Socket() string { return d.path("control.sock") }

// Spool is where an uploaded overlay is received.
func (d Dir) Spool() string { return d.path("upload.overlay") }

// Log is where the supervisor's own output goes.
func (d Dir) Log() string { return d.path("supervisor.log") }

// Cache and Mount are the session's cloudletfs cache and mount point.
func (d Dir) Cache() string { return d.path("cache") }
func (d Dir) Mount() string { return d.path("mnt") }

// VMOptions are the VM options a server gives all its sessions, as a supervisor gets them.
type VMOptions struct {
	Accel   vm.Accel
	Driver  vm.Driver
	Libvirt vm.Libvirt
	Network vm.Network
	RunAs   *vm.User
}

// RegistryOptions are the registry options a server gives all its sessions.
type RegistryOptions struct {
	PlainHTTP    bool   `json:"plain_http,omitempty"`
	DockerConfig string `json:"docker_config,omitempty"`
}

// Request is what a session was started with. It holds no secret: the owner is a hash of the
// client's token.
type Request struct {
	Base  string `json:"base"`
	Owner string `json:"owner"`
	URL   string `json:"url,omitempty"`
	// UploadSize, if set, says the overlay is uploaded into the spool, this many bytes;
	// UploadIdle is how long the spool may stop growing before the session fails.
	UploadSize int64         `json:"upload_size,omitempty"`
	UploadIdle time.Duration `json:"upload_idle,omitempty"`
	// Forwards are QEMU's host forwards; Addresses are the same, by guest port, as clients
	// reach them.
	Forwards     []vm.Forward      `json:"forwards"`
	Addresses    map[string]string `json:"addresses"`
	Probe        string            `json:"probe,omitempty"`
	EarlyStart   bool              `json:"early_start"`
	Bandwidth    int64             `json:"bandwidth,omitempty"`
	MaxOverlay   int64             `json:"max_overlay"`
	AllowOrigins []netip.Prefix    `json:"allow_origins,omitempty"`
	// Registry says how oci:// references reach their registry: over plain HTTP, with the
	// credentials of which docker config file (a path, never a secret).
	Registry RegistryOptions `json:"registry,omitempty"`
	VM       VMOptions       `json:"vm"`
	// ChunkStore, if set, is the directory of the chunk cache that sessions share, bounded to
	// ChunkStoreBytes.
	ChunkStore      string `json:"chunk_store,omitempty"`
	ChunkStoreBytes int64  `json:"chunk_store_bytes,omitempty"`
}

// State is how a session ended.
type State struct {
	State string `json:"state"` // stopped or failed
	Error string `json:"error,omitempty"`
}

// Create makes the session directory d (0700) and writes its request.
func Create(d Dir, req Request) error {
	if err := os.MkdirAll(filepath.Dir(string(d)), 0o700); err != nil {
		return fmt.Errorf("session %s: %w", d.ID(), err)
	}
	if err := os.Mkdir(string(d), 0o700); err != nil {
		return fmt.Errorf("session %s: %w", d.ID(), err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("session %s: request: %w", d.ID(), err)
	}
	if err := atomicfile.WriteFile(d.requestFile(), b); err != nil {
		return fmt.Errorf("session %s: %w", d.ID(), err)
	}
	return nil
}

// ReadRequest reads the session's request.
func (d Dir) ReadRequest() (Request, error) {
	var req Request
	b, err := os.ReadFile(d.requestFile())
	if err != nil {
		return req, fmt.Errorf("session %s: %w", d.ID(), err)
	}
	if err := json.Unmarshal(b, &req); err != nil {
		return req, fmt.Errorf("session %s: request: %w", d.ID(), err)
	}
	return req, nil
}

// ReadTimeline reads the events recorded so far. A torn last line (the supervisor died in
// its write) is left out.
func (d Dir) ReadTimeline() ([]synthesis.Event, error) {
	f, err := os.Open(d.timelineFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", d.ID(), err)
	}
	defer f.Close()
	var out []synthesis.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e synthesis.Event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			break
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// ReadState reads how the session ended; ok is false while no end was recorded.
func (d Dir) ReadState() (st State, modified time.Time, ok bool, err error) {
	b, err := os.ReadFile(d.stateFile())
	if errors.Is(err, os.ErrNotExist) {
		return st, modified, false, nil
	}
	if err != nil {
		return st, modified, false, fmt.Errorf("session %s: %w", d.ID(), err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, modified, false, fmt.Errorf("session %s: state: %w", d.ID(), err)
	}
	if fi, err := os.Stat(d.stateFile()); err == nil {
		modified = fi.ModTime()
	}
	return st, modified, true, nil
}

// WriteState records how the session ended.
func (d Dir) WriteState(st State) error {
	b, _ := json.Marshal(st)
	if err := atomicfile.WriteFile(d.stateFile(), b); err != nil {
		return fmt.Errorf("session %s: %w", d.ID(), err)
	}
	return nil
}

// recordMount notes where the session's cloudletfs is mounted: with QEMU as another user, that
// is a directory of cloudletfs.RunDir, not Mount.
func (d Dir) recordMount(dir string) error {
	if err := atomicfile.WriteFile(d.mountFile(), []byte(dir)); err != nil {
		return fmt.Errorf("session %s: %w", d.ID(), err)
	}
	return nil
}

// MountPoints are where the session's cloudletfs may be mounted.
func (d Dir) MountPoints() []string {
	out := []string{d.Mount()}
	if b, err := os.ReadFile(d.mountFile()); err == nil && len(b) > 0 {
		out = append(out, string(b))
	}
	return out
}

// appendEvent adds an event to the timeline file, durably: a server that adopts the session
// later reads it from there.
func (d Dir) appendEvent(e synthesis.Event) error {
	f, err := os.OpenFile(d.timelineFile(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("session %s: timeline: %w", d.ID(), err)
	}
	b, _ := json.Marshal(e)
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("session %s: timeline: %w", d.ID(), err)
	}
	return nil
}
