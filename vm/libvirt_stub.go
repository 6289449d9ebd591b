//go:build !cgo || nolibvirt

package vm

import "context"

// LibvirtBuilt says whether this binary has the libvirt driver (built with cgo and without
// the nolibvirt tag).
const LibvirtBuilt = false

func startLibvirt(context.Context, *VM, Options, bool) error { return ErrLibvirtNotBuilt }
