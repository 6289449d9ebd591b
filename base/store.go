package base

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// MinIDPrefix is the shortest ID prefix accepted for a base.
const MinIDPrefix = 8

// ErrNotFound is returned for an ID that names no base.
var ErrNotFound = errors.New("no such base")

// Store is a home directory of bases:
//
//	HOME/bases/ID/   one complete base (only ever created by a rename)
//	HOME/tmp/        drafts being created or imported, each locked by its creator
//	HOME/host/       QEMU's answers to the host probe, kept across processes (HostCache)
type Store struct {
	home string
}

// Open opens (creating if needed) the store at home and removes drafts left by crashed runs.
func Open(home string) (*Store, error) {
	if home == "" {
		return nil, errors.New("base store: no home directory")
	}
	// Base paths go to QEMU and into qcow2 backing references, which resolve relative to
	// other directories.
	home, err := filepath.Abs(home)
	if err != nil {
		return nil, fmt.Errorf("base store: %w", err)
	}
	if err := makePrivate(home); err != nil {
		return nil, fmt.Errorf("base store: %w", err)
	}
	s := &Store{home: home}
	s.removeStaleDrafts()
	return s, nil
}

// Home is the store's directory.
func (s *Store) Home() string { return s.home }

// HostCache is where the store at home keeps QEMU's answers to the host probe, so that a
// process that checks a resume reads the previous process's answer instead of starting QEMU
// (vm.NewCachedHost says when it asks again).
func HostCache(home string) string { return filepath.Join(home, "host") }

// Host is the QEMU on PATH, its probe kept in the store's HostCache.
func (s *Store) Host() *vm.Host { return vm.NewCachedHost("", HostCache(s.home)) }

func (s *Store) basesDir() string { return filepath.Join(s.home, "bases") }

// removeStaleDrafts deletes drafts whose creator is gone: a draft's lock is held for its whole
// life, so a draft we can lock was abandoned.
func (s *Store) removeStaleDrafts() {
	entries, _ := os.ReadDir(filepath.Join(s.home, "tmp"))
	for _, e := range entries {
		dir := filepath.Join(s.home, "tmp", e.Name())
		lock, err := os.Open(filepath.Join(dir, ".lock"))
		if err != nil {
			// A draft is locked right after it is made; one that never was is only old junk
			// once nobody could still be between those two steps.
			if st, serr := os.Stat(dir); serr == nil && time.Since(st.ModTime()) > time.Hour {
				os.RemoveAll(dir)
			}
			continue
		}
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			detachMountsUnder(dir)
			os.RemoveAll(dir)
		}
		lock.Close()
	}
}

// Base is a complete base in the store.
type Base struct {
	ID       string
	Dir      string
	Manifest *Manifest
}

// Path is the path of one of the base's files.
func (b *Base) Path(name string) string { return filepath.Join(b.Dir, name) }

// VMOptions is what a resume of this base must use: its config, kernel and initrd.
func (b *Base) VMOptions() vm.Options {
	o := vm.Options{Config: b.Manifest.VM}
	if b.Manifest.Has(KernelFile) {
		o.Kernel = b.Path(KernelFile)
	}
	if b.Manifest.Has(InitrdFile) {
		o.Initrd = b.Path(InitrdFile)
	}
	return o
}

// OpenImages opens the disk and memory images for reading, in that order (the order of an
// overlay's images). The function closes them.
func (b *Base) OpenImages() ([]io.ReaderAt, func(), error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, name := range []string{DiskFile, MemoryFile} {
		f, err := os.Open(b.Path(name))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("base %s: %w", b.ID, err)
		}
		files = append(files, f)
	}
	return []io.ReaderAt{files[0], files[1]}, closeAll, nil
}

// load reads and checks the base in dir. The manifest must hash to the directory's name and
// every file must have its recorded size; full digests are checked by Verify.
func load(dir string) (*Base, error) {
	id := filepath.Base(dir)
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("base %s: %w", id, err)
	}
	m, got, err := parseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("base %s: %w", id, err)
	}
	if got != id {
		return nil, fmt.Errorf("base %s: manifest digest is %s: the manifest was changed", id, got)
	}
	for name, f := range m.Files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("base %s: %w", id, err)
		}
		if st.Size() != f.Size {
			return nil, fmt.Errorf("base %s: %s is %d bytes, want %d", id, name, st.Size(), f.Size)
		}
	}
	return &Base{ID: id, Dir: dir, Manifest: m}, nil
}

// List returns the store's bases, oldest first. Bases that fail their checks are left out and
// reported in the error, so one damaged base does not hide the others.
func (s *Store) List() ([]*Base, error) {
	entries, err := os.ReadDir(s.basesDir())
	if err != nil {
		return nil, fmt.Errorf("base store: %w", err)
	}
	var bases []*Base
	var errs []error
	for _, e := range entries {
		b, err := load(filepath.Join(s.basesDir(), e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bases = append(bases, b)
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i].Manifest.Created.Before(bases[j].Manifest.Created) })
	return bases, errors.Join(errs...)
}

// Get finds a base by its ID or an unambiguous prefix of at least MinIDPrefix characters.
func (s *Store) Get(id string) (*Base, error) {
	id = strings.ToLower(id)
	if len(id) < MinIDPrefix {
		return nil, fmt.Errorf("base ID %q is too short: give at least %d characters", id, MinIDPrefix)
	}
	if strings.Trim(id, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("base ID %q is not hexadecimal", id)
	}
	entries, err := os.ReadDir(s.basesDir())
	if err != nil {
		return nil, fmt.Errorf("base store: %w", err)
	}
	var matches []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			matches = append(matches, e.Name())
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("base %s in %s: %w", id, s.home, ErrNotFound)
	case 1:
		return load(filepath.Join(s.basesDir(), matches[0]))
	}
	return nil, fmt.Errorf("base ID prefix %s is ambiguous: it matches %s", id, strings.Join(matches, ", "))
}

// Delete removes a base. It disappears from List at once (a rename); the files go after.
func (s *Store) Delete(id string) error {
	b, err := s.Get(id)
	if err != nil {
		return err
	}
	trash, err := os.MkdirTemp(filepath.Join(s.home, "tmp"), "delete-")
	if err != nil {
		return fmt.Errorf("delete base %s: %w", b.ID, err)
	}
	if err := os.Rename(b.Dir, filepath.Join(trash, b.ID)); err != nil {
		os.Remove(trash)
		return fmt.Errorf("delete base %s: %w", b.ID, err)
	}
	return os.RemoveAll(trash)
}

// Draft is a base being made. Its files are written into Dir; Commit seals it into the store
// with one rename, and Discard (or a crash) leaves nothing that List shows.
type Draft struct {
	store *Store
	Dir   string
	lock  *os.File
}

// NewDraft starts a base.
func (s *Store) NewDraft() (*Draft, error) {
	dir, err := os.MkdirTemp(filepath.Join(s.home, "tmp"), "draft-")
	if err != nil {
		return nil, fmt.Errorf("base draft: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("base draft: lock: %w", err)
	}
	return &Draft{store: s, Dir: dir, lock: lock}, nil
}

// Path is the path of a file of the draft.
func (d *Draft) Path(name string) string { return filepath.Join(d.Dir, name) }

// Discard removes the draft.
func (d *Draft) Discard() {
	d.lock.Close()
	os.RemoveAll(d.Dir)
}

// Commit hashes the draft's files, builds the per-chunk indexes and the manifest, and moves
// the draft into the store as a complete base.
func (d *Draft) Commit(ctx context.Context, m Manifest, p Progress) (*Base, error) {
	m.Format = FormatVersion
	m.ChunkSize = chunk.Size
	if m.Created.IsZero() {
		m.Created = time.Now().UTC().Truncate(time.Second)
	}
	m.Files = map[string]File{}
	indexed := map[string]string{DiskFile: DiskIndexFile, MemoryFile: MemoryIndexFile}
	for _, name := range []string{DiskFile, MemoryFile, DevstateFile, KernelFile, InitrdFile} {
		if _, err := os.Stat(d.Path(name)); errors.Is(err, os.ErrNotExist) && (name == KernelFile || name == InitrdFile) {
			continue
		}
		var index io.Writer
		var indexFile *os.File
		if idx, ok := indexed[name]; ok {
			f, err := os.OpenFile(d.Path(idx), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return nil, fmt.Errorf("commit base: %w", err)
			}
			indexFile, index = f, f
		}
		f, err := hashFile(ctx, d.Path(name), index, p)
		if indexFile != nil {
			err = errors.Join(err, indexFile.Close())
		}
		if err != nil {
			return nil, fmt.Errorf("commit base: %w", err)
		}
		m.Files[name] = f
		if idx, ok := indexed[name]; ok {
			if m.Files[idx], err = hashFile(ctx, d.Path(idx), nil, nil); err != nil {
				return nil, fmt.Errorf("commit base: %w", err)
			}
		}
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("commit base: %w", err)
	}
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("commit base: %w", err)
	}
	return d.seal(append(raw, '\n'))
}

// seal writes the manifest, makes every file durable and renames the draft into place.
func (d *Draft) seal(manifest []byte) (*Base, error) {
	_, id, err := parseManifest(manifest)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(d.Path(ManifestFile), manifest, 0o600); err != nil {
		return nil, fmt.Errorf("seal base %s: %w", id, err)
	}
	entries, err := os.ReadDir(d.Dir)
	if err != nil {
		return nil, fmt.Errorf("seal base %s: %w", id, err)
	}
	for _, e := range entries {
		if e.Name() == ".lock" {
			continue
		}
		// Files that QEMU or a copy made follow the umask: a base is its owner's alone.
		if err := os.Chmod(d.Path(e.Name()), privateMode(e)); err != nil {
			return nil, fmt.Errorf("seal base %s: %w", id, err)
		}
		if err := syncPath(d.Path(e.Name())); err != nil {
			return nil, fmt.Errorf("seal base %s: %w", id, err)
		}
	}
	if err := syncPath(d.Dir); err != nil {
		return nil, fmt.Errorf("seal base %s: %w", id, err)
	}
	final := filepath.Join(d.store.basesDir(), id)
	if _, err := os.Stat(final); err == nil {
		d.Discard()
		return nil, fmt.Errorf("base %s already exists in %s", id, d.store.home)
	}
	if err := os.Rename(d.Dir, final); err != nil {
		return nil, fmt.Errorf("seal base %s: %w", id, err)
	}
	// The lock goes only after the rename: until then a concurrent Open must see it held.
	os.Remove(filepath.Join(final, ".lock"))
	d.lock.Close()
	if err := syncPath(d.store.basesDir()); err != nil {
		return nil, fmt.Errorf("seal base %s: %w", id, err)
	}
	return load(final)
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// detachMountsUnder lazily unmounts whatever is mounted below dir: a draft abandoned by a
// crashed capture or resume may still hold a dead cloudletfs mount, which would make its
// removal fail.
func detachMountsUnder(dir string) {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, dir+"/"), false
	})
	if err != nil {
		return
	}
	// Deepest first: a mount below another is then still reachable by its path.
	slices.SortFunc(mounts, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	for _, m := range mounts {
		unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
	}
}
