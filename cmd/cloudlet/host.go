package main

import (
	"path/filepath"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/vm"
)

// host is the QEMU on PATH, its probe kept in the home's base.HostCache, for commands that
// check a host before they open the store (a refused 'base create' makes no home). Without a
// usable home it probes once per process.
func (g globals) host() *vm.Host {
	if g.home == "" {
		return vm.NewHost("")
	}
	home, err := filepath.Abs(g.home)
	if err != nil {
		return vm.NewHost("")
	}
	return vm.NewCachedHost("", base.HostCache(home))
}
