// Package ipc is kvd's control protocol on its unix socket: the framing, the
// messages, the error codes, and the one typed client that the gateway and
// `kvd status` both use.
//
// Every request is one frame and gets one reply frame. Control messages
// (hello, status) carry JSON; the per-step messages (open, close, step,
// step done) carry a compact little-endian binary encoding, since they run
// once per scheduler step. Each request carries a W3C traceparent.
//
// ipc must not import kernels or anything with cgo.
package ipc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/policy"
)

// Version is the protocol version; a frame of another version gets
// ErrVersionMismatch.
const Version = 1

// MaxFrame bounds a frame's size; a larger length ends the connection.
const MaxFrame = 64 << 20

// Message types. A reply has the request's type with ReplyBit set.
const (
	TypeHello    uint16 = 1
	TypeOpen     uint16 = 2
	TypeClose    uint16 = 3
	TypeStep     uint16 = 4
	TypeStepDone uint16 = 5
	TypeStatus   uint16 = 6
	// TypeStepNotify reports a step done and gets no reply: the gateway
	// sends it as soon as its forward pass ends and goes on sampling while
	// kvd evicts; the next request on the connection waits for kvd to
	// finish, so ordering needs nothing more.
	TypeStepNotify uint16 = 7
	ReplyBit       uint16 = 0x8000
	TypeError      uint16 = 0xFFFF
)

// Errors a client can act on. Codes cross the socket; the client turns them
// back into these sentinels (blocks' own for pool and sequence errors).
var (
	ErrVersionMismatch = errors.New("protocol version mismatch")
	ErrBadRequest      = errors.New("bad request")
	ErrLeaseInUse      = errors.New("lease held by another connection")
	ErrRestarted       = errors.New("kvd restarted: sequences in flight were lost")
	ErrNotRunning      = errors.New("kvd is not running")
	ErrDisconnected    = errors.New("connection to kvd lost")
	ErrInternal        = errors.New("kvd internal error")
)

// Error codes on the wire.
const (
	CodeBadRequest uint16 = iota + 1
	CodeVersionMismatch
	CodePoolExhausted
	CodeUnknownSeq
	CodeSeqExists
	CodeLeaseInUse
	CodeInternal
)

var codeErrors = map[uint16]error{
	CodeBadRequest:      ErrBadRequest,
	CodeVersionMismatch: ErrVersionMismatch,
	CodePoolExhausted:   blocks.ErrPoolExhausted,
	CodeUnknownSeq:      blocks.ErrUnknownSeq,
	CodeSeqExists:       blocks.ErrSeqExists,
	CodeLeaseInUse:      ErrLeaseInUse,
	CodeInternal:        ErrInternal,
}

// CodeOf is the wire code for err.
func CodeOf(err error) uint16 {
	for code, sentinel := range codeErrors {
		if errors.Is(err, sentinel) {
			return code
		}
	}
	return CodeInternal
}

// RemoteError is an error kvd replied with.
type RemoteError struct {
	Code    uint16
	Message string
}

func (e *RemoteError) Error() string { return "kvd: " + e.Message }

// Unwrap lets errors.Is match the sentinel of the code.
func (e *RemoteError) Unwrap() error { return codeErrors[e.Code] }

// HelloRequest opens a session. Lease is empty for a new client, or the
// lease of an earlier connection to reclaim its sequences.
type HelloRequest struct {
	Name  string `json:"name"`
	Lease string `json:"lease,omitempty"`
	// Done reports, when reclaiming a lease, the last step the client saw
	// finish (and whether it failed): kvd commits that step if it is the
	// one in flight and rolls back any other.
	Done   uint64 `json:"done,omitempty"`
	Failed bool   `json:"failed,omitempty"`
}

// HelloReply describes the pool; the reply frame carries the pool's fd.
type HelloReply struct {
	Instance   string      `json:"instance"` // changes when kvd restarts
	Lease      string      `json:"lease"`
	Reclaimed  []uint64    `json:"reclaimed"` // sequences kept from the lease
	PoolKind   string      `json:"pool_kind"`
	PoolBytes  int64       `json:"pool_bytes"`
	NumBlocks  int         `json:"num_blocks"`
	FreeBlocks int         `json:"free_blocks"`
	BlockSize  int         `json:"block_size"`
	Layers     int         `json:"layers"`
	KVHeads    int         `json:"kv_heads"`
	HeadDim    int         `json:"head_dim"`
	DType      string      `json:"dtype"`
	Policies   policy.Spec `json:"policies"`
	// A GPU pool (PoolKind "cuda", GPU set) comes as a CUDA IPC handle,
	// or, without one, as the reply's file descriptor (memory made with
	// CUDA's virtual memory management), with two interprocess events of
	// this lease: the
	// client records StepEvent once a step's work is queued, before it
	// reports the step done, and kvd waits for it before it moves cache
	// entries; kvd records EvictEvent after its eviction work, and the
	// client's next step waits for it on the device.
	GPU        string `json:"gpu,omitempty"`
	PoolHandle []byte `json:"pool_handle,omitempty"`
	StepEvent  []byte `json:"step_event,omitempty"`
	EvictEvent []byte `json:"evict_event,omitempty"`
}

// Status is what `kvd status --json` prints.
type Status struct {
	Instance       string        `json:"instance"`
	PID            int           `json:"pid"`
	UptimeSeconds  float64       `json:"uptime_seconds"`
	Model          string        `json:"model,omitempty"`
	PoolKind       string        `json:"pool_kind"`
	PoolBytes      int64         `json:"pool_bytes"`
	GPU            *GPUStatus    `json:"gpu,omitempty"` // the pool's GPU, from NVML
	BlockSize      int           `json:"block_size"`
	BlockBytes     int64         `json:"block_bytes"`
	KVCacheDType   string        `json:"kv_cache_dtype"` // how the pool holds K and V (--kv-cache-dtype)
	BlocksTotal    int           `json:"blocks_total"`
	BlocksUsed     int           `json:"blocks_used"`
	BlocksFree     int           `json:"blocks_free"`
	Clients        int           `json:"clients"`
	Sequences      int           `json:"sequences"`
	Steps          uint64        `json:"steps"`
	TokensSeen     int           `json:"tokens_seen"`     // tokens given to the open sequences
	TokensEvicted  uint64        `json:"tokens_evicted"`  // by decode-time eviction, since start
	BlocksReturned uint64        `json:"blocks_returned"` // to the pool by eviction, since start
	Leases         []LeaseStatus `json:"leases"`
	Layers         []LayerStatus `json:"layers"`
}

// GPUStatus is the pool's GPU as NVML reads it.
type GPUStatus struct {
	Name             string  `json:"name"`
	MemoryUsedBytes  uint64  `json:"memory_used_bytes"`
	MemoryTotalBytes uint64  `json:"memory_total_bytes"`
	Utilization      float64 `json:"utilization"` // fraction of the last sample period a kernel ran
	TemperatureC     int     `json:"temperature_c"`
	Error            string  `json:"error,omitempty"` // why there are no readings
}

// LeaseStatus is one client's lease.
type LeaseStatus struct {
	Name             string  `json:"name"`
	Connected        bool    `json:"connected"`
	Sequences        int     `json:"sequences"`
	DisconnectedFor  float64 `json:"disconnected_seconds,omitempty"`
	GraceLeftSeconds float64 `json:"grace_left_seconds,omitempty"`
}

// LayerStatus is one layer's share of the pool.
type LayerStatus struct {
	Index          int     `json:"index"`
	Policy         string  `json:"policy"`
	Budget         int     `json:"budget"`
	TokensRetained int     `json:"tokens_retained"`
	BlocksUsed     int     `json:"blocks_used"`
	Compression    float64 `json:"compression_ratio,omitempty"` // tokens seen per token retained
}

// DefaultSocket is $XDG_RUNTIME_DIR/kvd.sock, else /tmp/kvd-$UID/kvd.sock.
func DefaultSocket() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "kvd.sock")
	}
	return filepath.Join(os.TempDir(), "kvd-"+strconv.Itoa(os.Getuid()), "kvd.sock")
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}
