package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cloudlet/cloudlet/synthesis/origin"
)

func newLink(ctx context.Context, o options, bits int64, rtt time.Duration, work string) (link, error) {
	if o.netns {
		return newNetnsLink(ctx, bits, rtt, work)
	}
	s := origin.NewShapedServer(nil)
	s.Shape(rtt, bits/8)
	return loopbackLink{s}, nil
}

// loopbackLink is the userspace emulation: one token bucket for all connections and a delay
// per request, on loopback.
type loopbackLink struct{ s *origin.ShapedServer }

func (l loopbackLink) url(name string, data []byte) (string, error) { return l.s.Add(name, data), nil }
func (l loopbackLink) bytesServed() int64                           { return l.s.Bytes.Load() }
func (l loopbackLink) Close() error                                 { l.s.Close(); return nil }

// netnsLink is the kernel-level check: the origin runs in a network namespace of its own,
// reached over a veth pair whose far end is shaped by tc: netem (rate, delay) where the
// kernel has it, else a token bucket filter (rate) with the delay added by the origin.
type netnsLink struct {
	ns, hostIf, dir, addr string
	origin                *exec.Cmd
}

const (
	netnsHostAddr = "10.213.7.1"
	netnsPeerAddr = "10.213.7.2"
)

func newNetnsLink(ctx context.Context, bits int64, rtt time.Duration, work string) (link, error) {
	l := &netnsLink{ns: fmt.Sprintf("cloudlet-ttfr-%d", os.Getpid()), hostIf: fmt.Sprintf("ct%dh", os.Getpid()%100000)}
	peerIf := strings.TrimSuffix(l.hostIf, "h") + "p"
	l.dir = filepath.Join(work, fmt.Sprintf("origin-%d-%d", bits, rtt))
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return nil, err
	}
	ip := func(args ...string) error {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	inNS := func(args ...string) error { return ip(append([]string{"netns", "exec", l.ns}, args...)...) }
	steps := []func() error{
		func() error { return ip("netns", "add", l.ns) },
		func() error { return ip("link", "add", l.hostIf, "type", "veth", "peer", "name", peerIf) },
		func() error { return ip("link", "set", peerIf, "netns", l.ns) },
		func() error { return ip("addr", "add", netnsHostAddr+"/30", "dev", l.hostIf) },
		func() error { return ip("link", "set", l.hostIf, "up") },
		func() error { return inNS("ip", "addr", "add", netnsPeerAddr+"/30", "dev", peerIf) },
		func() error { return inNS("ip", "link", "set", peerIf, "up") },
		func() error { return inNS("ip", "link", "set", "lo", "up") },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			l.Close()
			return nil, fmt.Errorf("-netns: %w", err)
		}
	}
	// The origin's answers leave the namespace through peerIf: shape its egress.
	rate := strconv.FormatInt(bits, 10) + "bit"
	originRTT := time.Duration(0)
	if err := inNS("tc", "qdisc", "add", "dev", peerIf, "root", "netem", "delay", rtt.String(), "rate", rate); err != nil {
		fmt.Fprintf(os.Stderr, "-netns: no netem in this kernel (%v); shaping the rate with tbf and adding the RTT in the origin\n", err)
		burst := strconv.FormatInt(max(bits/8/100, 16<<10), 10) // 10 ms worth, at least 16 KiB
		if err := inNS("tc", "qdisc", "add", "dev", peerIf, "root", "tbf", "rate", rate, "burst", burst, "latency", "200ms"); err != nil {
			l.Close()
			return nil, fmt.Errorf("-netns: %w", err)
		}
		originRTT = rtt
	}
	self, err := os.Executable()
	if err != nil {
		l.Close()
		return nil, err
	}
	l.addr = net.JoinHostPort(netnsPeerAddr, "8000")
	l.origin = exec.Command("ip", "netns", "exec", l.ns, self, "-serve-dir", l.dir, "-listen", l.addr, "-rtt", originRTT.String())
	l.origin.Stderr = os.Stderr
	out, _ := l.origin.StdoutPipe()
	if err := l.origin.Start(); err != nil {
		l.Close()
		return nil, err
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.HasPrefix(line, "serving") {
		l.Close()
		return nil, fmt.Errorf("-netns: origin did not start: %q %v", line, err)
	}
	return l, nil
}

func (l *netnsLink) url(name string, data []byte) (string, error) {
	if err := os.WriteFile(filepath.Join(l.dir, name), data, 0o644); err != nil {
		return "", fmt.Errorf("-netns origin: %w", err)
	}
	return "http://" + l.addr + "/" + name, nil
}

// bytesServed is what crossed the veth towards the host, headers included.
func (l *netnsLink) bytesServed() int64 {
	b, _ := os.ReadFile("/sys/class/net/" + l.hostIf + "/statistics/rx_bytes")
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func (l *netnsLink) Close() error {
	if l.origin != nil && l.origin.Process != nil {
		l.origin.Process.Kill()
		l.origin.Wait()
	}
	exec.Command("ip", "link", "del", l.hostIf).Run()
	return exec.Command("ip", "netns", "del", l.ns).Run()
}

// serveDir is the origin inside the namespace (the harness re-executed with -serve-dir): the
// files of dir with range requests, a delay per request, and its address on stdout.
func serveDir(dir, addr string, rtt time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fs := http.FileServer(http.Dir(dir))
	fmt.Println("serving", addr)
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(rtt)
		fs.ServeHTTP(w, r)
	}))
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
