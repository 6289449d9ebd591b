package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Network says what a guest may reach besides the forwards into it.
type Network string

const (
	// NetworkNone: nothing. QEMU's user networking runs with restrict=on, so the guest reaches
	// neither the host (its loopback services appear at 10.0.2.2 otherwise) nor anything else.
	NetworkNone Network = "none"
	// NetworkInternet: outbound connections, but never to the host's loopback. QEMU runs in a
	// network namespace of its own, so the 10.0.2.2 alias leads to that namespace's empty
	// loopback; slirp4netns with --disable-host-loopback connects the namespace to the world.
	// Only the QEMU driver offers it.
	NetworkInternet Network = "internet"
)

// ParseNetwork reads the --guest-net flag.
func ParseNetwork(s string) (Network, error) {
	switch Network(s) {
	case "", NetworkNone:
		return NetworkNone, nil
	case NetworkInternet:
		return NetworkInternet, nil
	}
	return "", fmt.Errorf("guest network %q: want none or internet", s)
}

// egressAddr is the namespace's own address on slirp4netns's network (its default). Forwards
// go host port → this address in the namespace → QEMU's forward into the guest.
const egressAddr = "10.0.2.100"

// egressTimeout bounds slirp4netns's start.
const egressTimeout = 10 * time.Second

// egress is the slirp4netns process that connects a QEMU's network namespace to the world.
type egress struct {
	cmd   *exec.Cmd
	exitW *os.File // closing it ends slirp4netns (--exit-fd)
	done  chan struct{}
}

// startEgress connects the network namespace of process pid to the world and opens the
// forwards on the host side.
func startEgress(ctx context.Context, pid int, runDir string, forwards []Forward) (*egress, error) {
	bin, err := exec.LookPath("slirp4netns")
	if err != nil {
		return nil, fmt.Errorf("guest internet needs slirp4netns (make deps installs it): %w", err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	exitR, exitW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return nil, err
	}
	api := filepath.Join(runDir, "slirp4netns.sock")
	// slirp4netns runs as root and parses what the guest, and a QEMU it may have taken over,
	// send: its own sandbox and seccomp filter bound what a bug there would yield.
	cmd := exec.Command(bin, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
		"--ready-fd=3", "--exit-fd=4", "--api-socket", api, strconv.Itoa(pid), "tap0")
	cmd.ExtraFiles = []*os.File{readyW, exitR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr tailBuffer
	stderr.max = 4 << 10
	cmd.Stderr = &stderr
	err = cmd.Start()
	readyW.Close()
	exitR.Close()
	if err != nil {
		exitW.Close()
		return nil, fmt.Errorf("start slirp4netns: %w", err)
	}
	e := &egress{cmd: cmd, exitW: exitW, done: make(chan struct{})}
	go func() { defer close(e.done); cmd.Wait() }()

	if err := waitReady(ctx, readyR); err != nil {
		e.close()
		return nil, fmt.Errorf("slirp4netns: %w; it said: %s", err, stderr.String())
	}
	for _, f := range forwards {
		if err := addHostfwd(ctx, api, f); err != nil {
			e.close()
			return nil, err
		}
	}
	return e, nil
}

// waitReady waits for slirp4netns to write to its ready pipe.
func waitReady(ctx context.Context, r *os.File) error {
	r.SetReadDeadline(time.Now().Add(egressTimeout))
	if d, ok := ctx.Deadline(); ok {
		r.SetReadDeadline(d)
	}
	if _, err := r.Read(make([]byte, 1)); err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	return nil
}

// addHostfwd asks slirp4netns, through its API socket, to forward a host port into the
// namespace, where QEMU's own forward takes it on into the guest.
func addHostfwd(ctx context.Context, api string, f Forward) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", api)
	if err != nil {
		return fmt.Errorf("slirp4netns API: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(egressTimeout))
	req := map[string]any{"execute": "add_hostfwd", "arguments": map[string]any{
		"proto": f.Proto, "host_addr": f.HostAddr, "host_port": f.HostPort,
		"guest_addr": egressAddr, "guest_port": f.HostPort,
	}}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("slirp4netns API: %w", err)
	}
	var resp struct {
		Error *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return fmt.Errorf("slirp4netns API: forward %s: %w", f, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("slirp4netns: forward %s: %s", f, resp.Error.Desc)
	}
	return nil
}

// close ends slirp4netns and waits for it.
func (e *egress) close() {
	e.exitW.Close()
	select {
	case <-e.done:
	case <-time.After(2 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
	}
}
