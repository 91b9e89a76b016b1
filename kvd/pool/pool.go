// Package pool owns the memory behind kvd's layer-blocks. A Pool is one
// allocation laid out by shm.Layout; how a client maps it depends on where
// it lives: a memfd passed over the socket for host memory, a CUDA IPC
// handle for device memory. Nothing here assumes the memory is addressable
// by this process.
package pool

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/shm"
)

// Kinds of pool, as the hello reply names them.
const (
	KindMemfd = "memfd"
	// KindCUDA is a pool in GPU memory that clients open by its CUDA IPC
	// handle.
	KindCUDA = "cuda"
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

// Device is a pool in a compute backend's own memory: the GPU's, for the
// gateway's embedded mode (kvd's sidecar pool on the GPU, shared over CUDA
// IPC, is the next step). It cannot be mapped by another process.
type Device struct {
	handle *cuda.IPCHandle // set when other processes open the pool by IPC handle
	fd     int             // a VMM pool's file descriptor, or -1
	layout shm.Layout
	b      kernels.Backend
	t      *kernels.Tensor
}

// NewDevice allocates a zeroed pool of l on b.
func NewDevice(b kernels.Backend, l shm.Layout) (*Device, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	var t *kernels.Tensor
	if e, ok := b.(interface{ AllocExact(...int) *kernels.Tensor }); ok {
		t = e.AllocExact(l.PoolElems()) // not rounded up to a size class
	} else {
		t = b.Alloc(l.PoolElems())
	}
	if err := b.Err(); err != nil {
		b.Free(t)
		return nil, fmt.Errorf("KV pool of %d blocks (%d bytes) on %s: %w", l.NumBlocks, 4*int64(l.PoolElems()), b.Name(), err)
	}
	return &Device{layout: l, b: b, t: t, fd: -1}, nil
}

func (d *Device) Layout() shm.Layout { return d.layout }
func (d *Device) Kind() string       { return d.b.Name() }

// NewShared allocates a zeroed pool of l on b that other processes open:
// by its CUDA IPC handle, or, with byFD, as a file descriptor of memory
// made with CUDA's virtual memory management (FD passes it over the
// socket; each process maps it at the driver's recommended granularity).
func NewShared(b kernels.Backend, l shm.Layout, byFD bool) (*Device, error) {
	sh, ok := b.(kernels.Sharer)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot share memory with other processes", b.Name())
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	d := &Device{layout: l, b: b, fd: -1}
	var err error
	if byFD {
		d.t, d.fd, err = sh.AllocSharedFD(l.PoolElems())
	} else {
		var h cuda.IPCHandle
		d.t, h, err = sh.AllocShared(l.PoolElems())
		d.handle = &h
	}
	if err != nil {
		return nil, fmt.Errorf("KV pool of %d blocks (%d bytes) on %s: %w", l.NumBlocks, 4*int64(l.PoolElems()), b.Name(), err)
	}
	return d, nil
}

// Shared reports whether other processes open the pool.
func (d *Device) Shared() bool { return d.handle != nil || d.fd >= 0 }

// Handle is the CUDA IPC handle of a pool NewShared made.
func (d *Device) Handle() (cuda.IPCHandle, bool) {
	if d.handle == nil {
		return cuda.IPCHandle{}, false
	}
	return *d.handle, true
}
func (d *Device) Bytes() int64 { return 4 * int64(d.layout.PoolElems()) }
func (d *Device) FD() int      { return d.fd }
func (d *Device) Close() error {
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
	d.b.Free(d.t)
	return d.b.Err()
}

// Tensor is the pool as its backend holds it.
func (d *Device) Tensor() *kernels.Tensor { return d.t }

// Backend is the backend the pool lives on.
func (d *Device) Backend() kernels.Backend { return d.b }
