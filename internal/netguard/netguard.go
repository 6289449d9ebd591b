// Package netguard keeps a server from being used to reach its own host or its private
// network (server-side request forgery). A Guard refuses connections to addresses that are
// not public on the internet, unless the operator allowed their range.
//
// The check belongs where the address is final: in the dialer's Control hook, which sees the
// IP actually being connected after DNS, for every redirect and every retry. A check of the
// URL's host name alone would be bypassed by DNS rebinding or a redirect.
package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// Guard refuses non-public addresses outside its allowed ranges. Its fields are fixed after
// construction, so one Guard may be shared by any number of dialers.
type Guard struct {
	allow []netip.Prefix
}

// New returns a guard that lets through public addresses and those in allow.
func New(allow ...netip.Prefix) *Guard {
	g := &Guard{}
	for _, p := range allow {
		g.allow = append(g.allow, p.Masked())
	}
	return g
}

// RefusedError is a connection the guard did not allow.
type RefusedError struct {
	Addr  netip.Addr
	Class string // what the address is: "loopback", "private", ...
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("address %s is %s: refused (an operator may allow its range)", e.Addr, e.Class)
}

// ErrRefused matches every RefusedError with errors.Is.
var ErrRefused = errors.New("address refused")

func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// blocked are the ranges that are not public unicast addresses. IPv4-mapped IPv6 addresses
// are unmapped before the check, and IPv4 embedded in NAT64 addresses is checked as IPv4.
var blocked = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"}, // "this network": 0.0.0.0 reaches the host
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"}, // cloud metadata services live here
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "reserved"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // 255.255.255.255, broadcast, too
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "reserved"}, // IPv4-compatible, deprecated
	// Forms that carry or reach an IPv4 address by a local or tunnelled route: local-use
	// NAT64 (RFC 8215), 6to4, Teredo; and the discard-only prefix.
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local NAT64"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
	{netip.MustParsePrefix("2001::/32"), "Teredo"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("fc00::/7"), "unique-local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"}, // deprecated, still private
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// nat64 is the well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches a.b.c.d through a gateway.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Check returns a *RefusedError if a connection to addr is not allowed.
func (g *Guard) Check(addr netip.Addr) error {
	addr = addr.WithZone("")
	for _, p := range g.allow {
		if p.Contains(addr) || p.Contains(addr.Unmap()) {
			return nil
		}
	}
	if class := classify(addr.Unmap()); class != "" {
		return &RefusedError{Addr: addr, Class: class}
	}
	if nat64.Contains(addr) {
		v4 := addr.As16()
		return g.Check(netip.AddrFrom4([4]byte(v4[12:])))
	}
	return nil
}

func classify(a netip.Addr) string {
	if !a.IsValid() {
		return "not an IP address"
	}
	for _, b := range blocked {
		if b.prefix.Contains(a) {
			return b.class
		}
	}
	return ""
}

// Control is a net.Dialer Control hook: it refuses the connection before it is made if the
// address being dialled is not allowed.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	if !strings.HasPrefix(network, "tcp") && !strings.HasPrefix(network, "udp") {
		return fmt.Errorf("network %s: only tcp and udp are guarded, refused", network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	return g.Check(ap.Addr())
}

// Dialer returns a dialer that refuses what the guard refuses. Name resolution happens before
// Control is called, so the check sees each address actually tried.
func (g *Guard) Dialer(d net.Dialer) *net.Dialer {
	d.Control = g.Control
	d.ControlContext = nil
	return &d
}

// ParsePrefixes parses CIDR ranges such as "10.1.0.0/16" or "fd00::/8"; a bare address is
// its own range.
func ParsePrefixes(cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("range %q: want a CIDR such as 10.0.0.0/8: %w", c, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	}
	return out, nil
}
