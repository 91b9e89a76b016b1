package engine

import (
	"context"
	"fmt"

	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/shm"
)

// Local is a client of an engine in the same process: the gateway's
// embedded mode. It offers what ipc.Client offers, by direct calls, and
// reads plans straight from the allocator's tables instead of a mirror.
// Not safe for concurrent use (the runner drives it from one goroutine).
type Local struct {
	e    *Engine
	pool pool.Pool
	sess Session
	// evicting is closed when the last step's done report (and the
	// eviction it triggers) has been handled: it runs while the caller
	// samples, and every later call waits for it.
	evicting chan struct{}
}

// settle waits for the last step's done report to be handled.
func (c *Local) settle() {
	if c.evicting != nil {
		<-c.evicting
		c.evicting = nil
	}
}

// NewLocal starts an engine over a fresh host pool of l, for layers
// following spec, and connects to it.
func NewLocal(l shm.Layout, spec policy.Spec) (*Local, error) {
	p, err := pool.NewHost(l)
	if err != nil {
		return nil, err
	}
	return NewLocalPool(p, spec)
}

// NewLocalOn is NewLocal with the pool where b computes: shared host
// memory for the CPU backend, the GPU's memory for a GPU backend.
func NewLocalOn(b kernels.Backend, l shm.Layout, spec policy.Spec) (*Local, error) {
	if _, ok := b.(*kernels.CPU); ok {
		return NewLocal(l, spec)
	}
	p, err := pool.NewDevice(b, l)
	if err != nil {
		return nil, err
	}
	return NewLocalPool(p, spec)
}

// NewLocalPool is NewLocal over p (a pool.Device on the GPU, say), which
// the Local then owns.
func NewLocalPool(p pool.Pool, spec policy.Spec) (*Local, error) {
	e, err := New(p, Config{Spec: spec, Model: "embedded"})
	if err != nil {
		p.Close()
		return nil, err
	}
	h, err := e.Hello(context.Background(), ipc.HelloRequest{Name: "embedded"}, 0)
	if err != nil {
		p.Close()
		return nil, err
	}
	return &Local{e: e, pool: p, sess: Session{Lease: h.Lease}}, nil
}

// Engine is the engine behind this client.
func (c *Local) Engine() *Engine { return c.e }

// Layout is the pool's geometry.
func (c *Local) Layout() shm.Layout { return c.pool.Layout() }

// Spec is the layers' policies.
func (c *Local) Spec() policy.Spec { return c.e.cfg.Spec }

// PoolTensor is the pool as b, the forward pass's backend, addresses it.
func (c *Local) PoolTensor(b kernels.Backend) *kernels.Tensor {
	if d, ok := c.pool.(*pool.Device); ok {
		return d.Tensor()
	}
	return b.FromHost(c.pool.(*pool.Host).Float32s(), c.pool.Layout().PoolElems())
}

func (c *Local) Open(ctx context.Context, ids ...uint64) error {
	c.settle()
	return c.e.Open(ctx, c.sess, ids)
}

func (c *Local) Close(ctx context.Context, ids ...uint64) error {
	c.settle()
	return c.e.Close(ctx, c.sess, ids)
}

// Reserve reserves a step (reporting the previous one done) and returns its
// id and its plan, which the caller builds a layer at a time before it
// reports the step done.
func (c *Local) Reserve(ctx context.Context, appends []blocks.Append) (uint64, *blocks.StepPlan, error) {
	c.settle()
	rep, err := c.e.Step(ctx, c.sess, &ipc.StepRequest{Appends: appends})
	if err != nil {
		return 0, nil, err
	}
	plan, err := c.e.plan(c.sess, appends)
	if err != nil {
		c.e.StepDone(ctx, c.sess, rep.StepID, true) // roll the step back: it never runs
		return 0, nil, err
	}
	return rep.StepID, plan, nil
}

// Done reports the step finished. The report, and the eviction it may
// trigger, run in the background while the caller hands out the step's
// tokens; the next call waits for them.
func (c *Local) Done(id uint64, failed bool) {
	c.settle()
	done := make(chan struct{})
	c.evicting = done
	go func() {
		defer close(done)
		c.e.StepDone(context.Background(), c.sess, id, failed)
	}()
}

// FreeBlocks is the number of blocks no table holds.
func (c *Local) FreeBlocks() int {
	c.settle()
	return c.e.FreeBlocks()
}

// Abandon closes sequences (in process, kvd is always reachable).
func (c *Local) Abandon(ids ...uint64) { c.Close(context.Background(), ids...) }

// Shutdown releases the pool.
func (c *Local) Shutdown() error { return c.pool.Close() }

// plan starts the client's step plan from the allocator's tables. The
// plan holds each table's length and block list as they are now
// (blocks.StepPlan), so the caller builds its layers after the lock is
// released.
func (e *Engine) plan(sess Session, appends []blocks.Append) (*blocks.StepPlan, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.client(sess)
	if err != nil {
		return nil, err
	}
	internal := make([]blocks.Append, len(appends))
	for i, a := range appends {
		sid, ok := c.seqs[uint64(a.Seq)]
		if !ok {
			return nil, fmt.Errorf("sequence %d: %w", a.Seq, blocks.ErrUnknownSeq)
		}
		internal[i] = blocks.Append{Seq: sid, N: a.N}
	}
	return e.alloc.StepPlanInto(internal, &c.planBuf)
}
