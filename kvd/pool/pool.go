// Package pool owns the memory behind kvd's layer-blocks. A Pool is one
// allocation laid out by shm.Layout; how a client maps it depends on where
// it lives: a memfd passed over the socket for host memory, a CUDA IPC
// handle for device memory (a later backend). Nothing here assumes the
// memory is addressable by this process.
package pool

import (
	"fmt"

	"github.com/kvd-project/kvd/shm"
)

// Kinds of pool, as the hello reply names them.
const (
	KindMemfd = "memfd"
)

// Pool is the block memory. kvd creates one at start and closes it at exit;
// clients map it once at hello.
type Pool interface {
	Layout() shm.Layout
	Kind() string
	// Bytes is the allocation's size.
	Bytes() int64
	// FD is the file descriptor to pass to clients, or -1 when the pool is
	// shared another way.
	FD() int
	Close() error
}

// Host is a pool in shared host memory (a sealed memfd).
type Host struct {
	layout shm.Layout
	seg    *shm.Segment
}

// NewHost allocates a host pool for l; the pages are zero.
func NewHost(l shm.Layout) (*Host, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	seg, err := shm.Create("kvd-pool", int64(l.PoolElems())*4)
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	return &Host{layout: l, seg: seg}, nil
}

func (h *Host) Layout() shm.Layout { return h.layout }
func (h *Host) Kind() string       { return KindMemfd }
func (h *Host) Bytes() int64       { return int64(len(h.seg.Bytes())) }
func (h *Host) FD() int            { return h.seg.FD() }
func (h *Host) Close() error       { return h.seg.Close() }

// Float32s is the pool's memory as kvd maps it.
func (h *Host) Float32s() []float32 { return h.seg.Float32s() }
