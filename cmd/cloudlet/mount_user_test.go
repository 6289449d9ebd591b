package main

import (
	"reflect"
	"testing"

	"github.com/cloudlet/cloudlet/cloudletfs"
)

func TestParseMountUser(t *testing.T) {
	tests := []struct {
		in      string
		want    *cloudletfs.User
		wantErr bool
	}{
		{"", nil, false},
		{"root", &cloudletfs.User{UID: 0, GID: 0}, false},
		{"0", &cloudletfs.User{UID: 0, GID: 0}, false},
		{"nobody", &cloudletfs.User{UID: 65534, GID: 65534}, false},
		{"4000000", &cloudletfs.User{UID: 4000000, GID: 4000000}, false}, // not in the user database
		{"no-such-user-here", nil, true},
		{"-1", nil, true},
	}
	for _, tc := range tests {
		got, err := parseMountUser(tc.in)
		if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseMountUser(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
