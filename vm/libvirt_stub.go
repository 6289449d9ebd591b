//go:build !cgo || nolibvirt

package vm

import (
	"context"
	"errors"
)

// LibvirtBuilt says whether this binary has the libvirt driver (built with cgo and without
// the nolibvirt tag).
const LibvirtBuilt = false

func startLibvirt(context.Context, *VM, Options, bool) error {
	return errors.New("--driver libvirt: this cloudlet was built without libvirt support " +
		"(CGO_ENABLED=0 or -tags nolibvirt); rebuild it with cgo and libvirt-dev installed (make deps build)")
}
