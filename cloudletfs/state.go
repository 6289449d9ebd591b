package cloudletfs

import "fmt"

// State is where a chunk's bytes come from right now.
type State uint8

const (
	// StateBase: the base image has the chunk; it is read from the base file.
	StateBase State = iota
	// StateZero: the chunk is all zeros; it is answered without any I/O.
	StateZero
	// StatePending: only the overlay has the chunk; reads wait until it is delivered.
	StatePending
	// StatePresent: delivered and written to the cache file.
	StatePresent
	// StateModified: written by the VM; its bytes are in the cache file.
	StateModified
	// stateBusy: being written to the cache (by a delivery or a VM write); readers wait.
	stateBusy
)

func (s State) String() string {
	switch s {
	case StateBase:
		return "base"
	case StateZero:
		return "zero"
	case StatePending:
		return "pending"
	case StatePresent:
		return "present"
	case StateModified:
		return "modified"
	case stateBusy:
		return "busy"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// cached reports whether the chunk's bytes are in the cache file.
func (s State) cached() bool { return s == StatePresent || s == StateModified }

// Priority says how urgently a demanded chunk is needed.
type Priority uint8

const (
	// PriorityDemand: a reader (a vCPU, a disk request) is blocked on the chunk.
	PriorityDemand Priority = iota
	// PriorityNeighbour: the chunk lies just after a demand miss and is likely next.
	PriorityNeighbour
)

// Demander is the source of pending chunks. cloudletfs tells it which chunk a reader waits
// for; the source answers later through FS.Deliver. Demand must not block: the source queues
// the request and lets the chunk jump its queue. Each chunk is demanded at most once per
// mount, however many readers wait for it.
type Demander interface {
	Demand(image string, chunk int64, prio Priority)
}
