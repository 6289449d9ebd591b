package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		addr  string
		allow []string
		class string // "" means allowed
	}{
		{"8.8.8.8", nil, ""},
		{"2606:4700::1111", nil, ""},
		{"127.0.0.1", nil, "loopback"},
		{"127.8.9.10", nil, "loopback"},
		{"::1", nil, "loopback"},
		{"::ffff:127.0.0.1", nil, "loopback"},
		{"::ffff:10.1.2.3", nil, "private"},
		{"64:ff9b::7f00:1", nil, "loopback"},
		{"64:ff9b::808:808", nil, ""},
		{"64:ff9b:1::a00:1", nil, "local NAT64"},
		{"2002:a00:1::1", nil, "6to4"},
		{"2001:0:a00:1::1", nil, "Teredo"},
		{"100::1", nil, "discard-only"},
		{"10.0.0.1", nil, "private"},
		{"172.16.0.1", nil, "private"},
		{"172.31.255.255", nil, "private"},
		{"172.32.0.1", nil, ""},
		{"192.168.1.1", nil, "private"},
		{"169.254.169.254", nil, "link-local"},
		{"fe80::1", nil, "link-local"},
		{"fe80::1%eth0", nil, "link-local"},
		{"fc00::1", nil, "unique-local"},
		{"fd12:3456::1", nil, "unique-local"},
		{"100.64.0.1", nil, "carrier-grade NAT"},
		{"100.127.255.255", nil, "carrier-grade NAT"},
		{"100.128.0.1", nil, ""},
		{"224.0.0.1", nil, "multicast"},
		{"ff02::1", nil, "multicast"},
		{"0.0.0.0", nil, "unspecified"},
		{"::", nil, "unspecified"},
		{"::7f00:1", nil, "reserved"},
		{"255.255.255.255", nil, "reserved"},
		{"127.0.0.1", []string{"127.0.0.0/8"}, ""},
		{"::ffff:127.0.0.1", []string{"127.0.0.0/8"}, ""},
		{"10.2.3.4", []string{"10.2.0.0/16"}, ""},
		{"10.3.3.4", []string{"10.2.0.0/16"}, "private"},
		{"fd00::5", []string{"fd00::5"}, ""},
		{"::1", []string{"127.0.0.0/8"}, "loopback"},
	}
	for _, tc := range tests {
		allow, err := ParsePrefixes(tc.allow)
		if err != nil {
			t.Fatal(err)
		}
		err = New(allow...).Check(netip.MustParseAddr(tc.addr))
		var re *RefusedError
		switch {
		case tc.class == "" && err != nil:
			t.Errorf("%s (allow %v): got %v, want allowed", tc.addr, tc.allow, err)
		case tc.class != "" && !errors.As(err, &re):
			t.Errorf("%s (allow %v): got %v, want refused as %s", tc.addr, tc.allow, err, tc.class)
		case tc.class != "" && re.Class != tc.class:
			t.Errorf("%s: got class %q, want %q", tc.addr, re.Class, tc.class)
		case tc.class != "" && !errors.Is(err, ErrRefused):
			t.Errorf("%s: %v does not match ErrRefused", tc.addr, err)
		}
	}
}

// TestDialerRefusesLoopback dials a real listener on loopback: refused by default, connected
// once its range is allowed. The name "localhost" is resolved first, and its address refused.
func TestDialerRefusesLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { l.Close(); <-accepted }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		host  string
		allow []string
		ok    bool
	}{
		{"127.0.0.1", nil, false},
		{"localhost", nil, false},
		{"127.0.0.1", []string{"127.0.0.0/8"}, true},
	}
	for _, tc := range tests {
		allow, _ := ParsePrefixes(tc.allow)
		c, err := New(allow...).Dialer(net.Dialer{}).DialContext(ctx, "tcp4", net.JoinHostPort(tc.host, port))
		if c != nil {
			c.Close()
		}
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, ErrRefused) {
			t.Errorf("dial %s (allow %v): got %v, want ok=%v", tc.host, tc.allow, err, tc.ok)
		}
	}
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3", "10.1.2.3/32"},
		{"fd00::/8", "fd00::/8"},
		{"10.0.0.0/33", ""},
		{"nonsense", ""},
	}
	for _, tc := range tests {
		got, err := ParsePrefixes([]string{tc.in})
		if tc.want == "" {
			if err == nil {
				t.Errorf("%q: got %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got[0].String() != tc.want {
			t.Errorf("%q: got %v %v, want %s", tc.in, got, err, tc.want)
		}
	}
}
