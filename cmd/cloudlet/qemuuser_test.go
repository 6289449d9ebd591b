package main

import (
	"errors"
	"strings"
	"testing"
)

// TestResolveQEMUUser is the --qemu-user policy, on this host's real user database: as root,
// QEMU runs as cloudlet-qemu unless named otherwise, as root only when asked by name; a user
// that is not root runs QEMU as itself.
func TestResolveQEMUUser(t *testing.T) {
	created := ""
	create := func(name string) error { created = name; return errors.New("useradd: not in this test") }
	tests := []struct {
		name, flag  string
		euid        int
		wantUser    string // "" means no switch (nil)
		wantErr     string
		wantCreated string
	}{
		{"root, named user", "nobody", 0, "nobody", "", ""},
		{"root, asks for root", "root", 0, "", "", ""},
		{"non-root, default", "", 1000, "", "", ""},
		{"non-root, names itself", "nobody", 65534, "", "", ""},
		{"non-root, names another", "nobody", 1000, "", "only root can start QEMU as nobody", ""},
		{"non-root, names root", "root", 1000, "", "only root can start QEMU as root", ""},
		{"unknown user", "no-such-qemu-user", 0, "", "no user no-such-qemu-user: create it (useradd", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			created = ""
			u, err := resolveQEMUUser(tc.flag, tc.euid, create)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if u != nil {
				got = u.Name
			}
			if got != tc.wantUser || created != tc.wantCreated {
				t.Fatalf("got user %q (created %q), want %q (created %q)", got, created, tc.wantUser, tc.wantCreated)
			}
		})
	}
}

// TestDefaultQEMUUser: as root without --qemu-user, QEMU runs as cloudlet-qemu, which is
// created when missing; a second resolve finds it.
func TestDefaultQEMUUser(t *testing.T) {
	for range 2 {
		u, err := resolveQEMUUser("", 0, createQEMUUser)
		if err != nil {
			t.Fatal(err)
		}
		if u == nil || u.Name != defaultQEMUUser || u.UID == 0 || u.GID == 0 {
			t.Fatalf("got %+v, want the unprivileged %s", u, defaultQEMUUser)
		}
	}
}
