package vm

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Config is the part of a VM that a snapshot and its resume must repeat exactly: QEMU refuses
// (or worse, misbehaves) when machine type, CPU model, RAM size, devices or the boot ROM differ.
// It is recorded in the base manifest.
type Config struct {
	Machine     string `json:"machine"`
	CPU         string `json:"cpu"`
	MemoryBytes int64  `json:"memory_bytes"`
	CPUs        int    `json:"cpus"`
	// Append is the kernel command line; it only matters with a kernel, but it is part of the
	// boot ROM data, so it is kept with the rest.
	Append string `json:"append,omitempty"`
	// Devices names the fixed device model (see DeviceModel); a resume checks it.
	Devices []string `json:"devices"`
	// Platform is what a snapshot of this VM needs of the host that resumes it (QEMU version,
	// CPU features), recorded when it is taken; nil in snapshots made before it was recorded.
	Platform *Platform `json:"platform,omitempty"`
}

// DeviceModel is the device set every VM of this driver has, in command-line order. Changing it
// breaks resuming older snapshots, so a snapshot records it and a resume compares.
var deviceModel = []string{"virtio-blk-pci", "virtio-net-pci", "isa-serial", "VGA"}

// DeviceModel returns the device set of this driver.
func DeviceModel() []string { return append([]string(nil), deviceModel...) }

// DefaultConfig is the VM shape used when a caller does not choose one.
func DefaultConfig() Config {
	return Config{
		Machine:     "q35",
		CPU:         "max",
		MemoryBytes: 256 << 20,
		CPUs:        1,
		Append:      "console=ttyS0 panic=-1 loglevel=4",
		Devices:     DeviceModel(),
	}
}

// Validate reports a config QEMU cannot run the same way twice.
func (c Config) Validate() error {
	switch {
	case c.Machine == "":
		return fmt.Errorf("vm config: no machine type")
	case c.CPU == "":
		return fmt.Errorf("vm config: no CPU model")
	case c.MemoryBytes < 16<<20 || c.MemoryBytes%(1<<20) != 0:
		return fmt.Errorf("vm config: memory %d bytes: want a whole number of MiB, at least 16 MiB", c.MemoryBytes)
	case c.CPUs < 1 || c.CPUs > 64:
		return fmt.Errorf("vm config: %d CPUs: want 1 to 64", c.CPUs)
	}
	if strings.Join(c.Devices, ",") != strings.Join(deviceModel, ",") {
		return fmt.Errorf("vm config: devices %v, but this driver provides %v", c.Devices, deviceModel)
	}
	if c.Platform != nil {
		if err := c.Platform.Validate(); err != nil {
			return fmt.Errorf("vm config: %w", err)
		}
	}
	return nil
}

// ParseSize reads a memory size such as 256M, 1G or 268435456.
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, strings.TrimSuffix(t, "K")
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, strings.TrimSuffix(t, "M")
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, strings.TrimSuffix(t, "G")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

// Forward is a user-net host forward, written like QEMU's hostfwd:
// tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT. An empty host address listens on all interfaces.
type Forward struct {
	Proto     string
	HostAddr  string
	HostPort  int
	GuestPort int
}

// ParseForward reads "tcp:8080-:80", "tcp:127.0.0.1:8080-:80" or "udp:5353-:53".
func ParseForward(s string) (Forward, error) {
	bad := func(why string) (Forward, error) {
		return Forward{}, fmt.Errorf("host forward %q: %s (want tcp:[HOSTADDR:]HOSTPORT-:GUESTPORT)", s, why)
	}
	proto, rest, ok := strings.Cut(s, ":")
	if !ok || (proto != "tcp" && proto != "udp") {
		return bad("protocol must be tcp or udp")
	}
	host, guest, ok := strings.Cut(rest, "-")
	if !ok {
		return bad("no '-' between host and guest side")
	}
	f := Forward{Proto: proto}
	if i := strings.LastIndex(host, ":"); i >= 0 {
		f.HostAddr, host = host[:i], host[i+1:]
		if f.HostAddr != "" && net.ParseIP(f.HostAddr) == nil {
			return bad("host address is not an IP address")
		}
	}
	var err error
	if f.HostPort, err = parsePort(host); err != nil {
		return bad("host " + err.Error())
	}
	guestAddr, guestPort, _ := strings.Cut(guest, ":")
	if guestAddr != "" && guestPort == "" {
		guestPort, guestAddr = guestAddr, ""
	}
	if guestAddr != "" {
		return bad("guest address is not supported; the guest is always 10.0.2.15")
	}
	if f.GuestPort, err = parsePort(guestPort); err != nil {
		return bad("guest " + err.Error())
	}
	return f, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not 1-65535", s)
	}
	return n, nil
}

func (f Forward) String() string {
	return fmt.Sprintf("%s:%s:%d-:%d", f.Proto, f.HostAddr, f.HostPort, f.GuestPort)
}

// CheckFree fails when the forward's host port is taken, which QEMU would only report as a
// failed "hostfwd" rule.
func (f Forward) CheckFree() error {
	addr := net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort))
	if f.Proto == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("host forward %s: host port %d is already in use: %w", f, f.HostPort, err)
		}
		return c.Close()
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("host forward %s: host port %d is already in use: %w", f, f.HostPort, err)
	}
	return l.Close()
}
