package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/probe"
	"github.com/cloudlet/cloudlet/vm"
)

// The peer is what a user with stock QEMU and no cloudlet would do: the custom disk as a qcow2
// layer over the base (which the cloudlet has), read lazily over HTTP by QEMU's curl block
// driver, and the custom VM's memory as a full migration stream (zstd), downloaded and fed
// to QEMU as it arrives.
type peer struct {
	b               *base.Base
	disk, memory    []byte // peer-disk.qcow2 and peer-memory.zst
	diskSize        int64
	diskURL, memURL string // on the current link's origin
	port            int    // guest port the probe asks
	path            string // of the probe's URL, as the other modes ask it
	workDir         string
	// host is this host's QEMU as asked once, at preparation: a timed resume does not
	// probe it again.
	host *vm.Host
}

// preparePeer makes the peer's files from the overlay: apply it, convert the custom disk to a
// qcow2 layer over the base disk, and record the custom VM's full migration stream.
func preparePeer(ctx context.Context, o options, work string) (*peer, error) {
	store, err := base.Open(o.home)
	if err != nil {
		return nil, err
	}
	b, err := store.Get(o.base)
	if err != nil {
		return nil, err
	}
	applied := filepath.Join(work, "applied")
	cmd := exec.CommandContext(ctx, o.cloudlet, "overlay", "apply", o.overlay, "--base", b.ID, "--out", applied)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+o.home)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("peer: overlay apply: %w: %s", err, out)
	}
	// The layer holds only the clusters where the custom disk differs from the base: an empty
	// layer over the custom disk, rebased in safe mode onto the base, keeps exactly those.
	// ('qemu-img convert -B' would copy every allocated cluster of a raw source.)
	qcow := filepath.Join(work, "peer-disk.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", "-b", filepath.Join(applied, base.DiskFile), "-F", "raw", qcow},
		{"rebase", "-q", "-f", "qcow2", "-b", b.Path(base.DiskFile), "-F", "raw", qcow},
	} {
		if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("peer: qemu-img %s: %w: %s", args[0], err, out)
		}
	}

	// A resume of the custom VM with private RAM, snapshotted at once: x-ignore-shared skips
	// only shared RAM, so this stream carries all of it.
	host := vm.NewHost("")
	opts := b.VMOptions()
	opts.Disk = vm.Disk{Path: filepath.Join(applied, base.DiskFile)}
	opts.Memory = vm.Memory{Path: filepath.Join(applied, base.MemoryFile)}
	opts.KeepHugepageAdvice = true
	opts.Host = host
	v, err := vm.Resume(ctx, opts, filepath.Join(applied, base.DevstateFile))
	if err != nil {
		return nil, fmt.Errorf("peer: resume the custom VM: %w", err)
	}
	stream := filepath.Join(work, "peer-memory.stream")
	if err := v.Snapshot(ctx, stream); err != nil {
		return nil, fmt.Errorf("peer: migration stream: %w", err)
	}
	raw, err := os.ReadFile(stream)
	if err != nil {
		return nil, err
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
	p := &peer{b: b, memory: enc.EncodeAll(raw, nil), diskSize: b.Manifest.Files[base.DiskFile].Size, port: o.port, path: o.path, workDir: work, host: host}
	if p.disk, err = os.ReadFile(qcow); err != nil {
		return nil, err
	}
	os.RemoveAll(applied)
	os.Remove(stream)
	fmt.Fprintf(os.Stderr, "peer: disk layer %.1f MB (qcow2 over the base), memory stream %.1f MB raw, %.1f MB zstd\n",
		float64(len(p.disk))/1e6, float64(len(raw))/1e6, float64(len(p.memory))/1e6)
	return p, nil
}

// run is one peer synthesis: from nothing local but the base to the first answer.
func (p *peer) run(ctx context.Context, l link) (sample, error) {
	var out sample
	dir, err := os.MkdirTemp(p.workDir, "peer-run-")
	if err != nil {
		return out, err
	}
	defer os.RemoveAll(dir)
	top := filepath.Join(dir, "top.qcow2")
	if o, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", p.diskURL, "-F", "qcow2",
		top, strconv.FormatInt(p.diskSize, 10)).CombinedOutput(); err != nil {
		return out, fmt.Errorf("peer: qemu-img create: %w: %s", err, o)
	}
	ram := filepath.Join(dir, "ram")
	fifo := filepath.Join(dir, "stream")
	if err := os.WriteFile(ram, nil, 0o644); err != nil {
		return out, err
	}
	if err := os.Truncate(ram, p.b.Manifest.VM.MemoryBytes); err != nil {
		return out, err
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return out, fmt.Errorf("peer: mkfifo: %w", err)
	}
	hostPort, err := freePort()
	if err != nil {
		return out, err
	}
	pr, err := probe.Parse(fmt.Sprintf("http://127.0.0.1:%d%s", hostPort, p.path))
	if err != nil {
		return out, err
	}

	start, before := time.Now(), l.bytesServed()
	streamed := make(chan error, 1)
	var streamDone time.Duration
	go func() {
		err := p.stream(ctx, fifo)
		streamDone = time.Since(start)
		streamed <- err
	}()
	opts := p.b.VMOptions()
	opts.Disk = vm.Disk{Path: top, Format: "qcow2"}
	opts.Memory = vm.Memory{Path: ram}
	opts.Forwards = []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: hostPort, GuestPort: p.port}}
	opts.KeepHugepageAdvice = true // RAM is not on FUSE here
	opts.Host = p.host
	v, err := vm.Resume(ctx, opts, fifo)
	if err != nil {
		// Unblock the writer if QEMU never opened the stream.
		if f, ferr := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0); ferr == nil {
			f.Close()
		}
		return out, fmt.Errorf("peer: resume: %w (stream: %v)", err, <-streamed)
	}
	defer v.Stop(context.WithoutCancel(ctx))
	out.Resumed = time.Since(start).Seconds()
	if err := <-streamed; err != nil {
		return out, fmt.Errorf("peer: memory stream: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := pr.Wait(pctx, v.Console()); err != nil {
		return out, fmt.Errorf("peer: no answer: %w", err)
	}
	out.TTFR = time.Since(start).Seconds()
	out.BytesBefore = l.bytesServed() - before
	out.Complete = streamDone.Seconds() // the memory; the disk stays lazy
	return out, nil
}

// stream downloads the memory stream, decompresses it and writes it into the FIFO QEMU reads.
// The FIFO is opened first (it waits for the reader, vm.Resume), so that a failed download
// closes it and QEMU's incoming migration fails instead of waiting.
func (p *peer) stream(ctx context.Context, fifo string) error {
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, "GET", p.memURL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", p.memURL, resp.Status)
	}
	dec, err := zstd.NewReader(resp.Body)
	if err != nil {
		return err
	}
	defer dec.Close()
	_, err = io.Copy(f, dec)
	return err
}
