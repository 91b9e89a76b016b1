package kernels

import "github.com/kvd-project/kvd/kernels/cuda"

// Sharer is a backend whose memory and events another process on the same
// machine can open: the CUDA backend, over CUDA IPC. kvd allocates its pool
// and two events per client with it; the gateway opens them. Errors of the
// enqueueing calls (Record, WaitEvent) are kept for Err, as a kernel's.
type Sharer interface {
	Backend
	// AllocShared allocates a zeroed tensor of its own (the base of an
	// allocation, which is what an IPC handle names) and exports it.
	AllocShared(shape ...int) (*Tensor, cuda.IPCHandle, error)
	// OpenShared maps another process's exported tensor; Free unmaps it.
	OpenShared(h cuda.IPCHandle, shape ...int) (*Tensor, error)
	// AllocSharedFD and OpenSharedFD are AllocShared and OpenShared over
	// CUDA's virtual memory management: the memory crosses as a file
	// descriptor (the caller closes it) and each process maps it at the
	// driver's recommended granularity.
	AllocSharedFD(shape ...int) (*Tensor, int, error)
	OpenSharedFD(fd int, shape ...int) (*Tensor, error)
	// NewEvent creates an interprocess event and exports it.
	NewEvent() (cuda.Event, cuda.IPCHandle, error)
	// OpenEvent opens another process's exported event.
	OpenEvent(h cuda.IPCHandle) (cuda.Event, error)
	// Record marks e at the current end of the backend's queued work.
	Record(e cuda.Event)
	// WaitEvent makes the backend's later work wait for e, on the device.
	WaitEvent(e cuda.Event)
	// EventDone reports whether e has happened, without waiting.
	EventDone(e cuda.Event) (bool, error)
	// CloseEvent destroys (or, for an opened one, releases) e.
	CloseEvent(e cuda.Event)
}
