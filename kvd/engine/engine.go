// Package engine is kvd's state: the pool, the allocator, the layers'
// policies, the clients and their leases, and the steps in flight. It runs
// decode-time eviction between steps: when a step is reported done, every
// layer that exceeds its decode budget by a block is compacted with the
// kernels backend and its emptied blocks go back to the pool; the client
// learns the new table sizes with its next step's reply. The socket server
// (kvd/api) and the gateway's embedded mode both drive the same Engine, so
// the sidecar and the single process behave alike.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/observability"
)

// Config is what the engine is started with.
type Config struct {
	Spec  policy.Spec   // every layer's policy; its length is the model's depth
	Model string        // shown in status
	Grace time.Duration // how long a dropped client's sequences are kept
	Now   func() time.Time
	// GPU reads the pool's GPU for status (nil: no GPU readings).
	GPU func() *ipc.GPUStatus
	// StepWait bounds how long eviction waits for a client's step to
	// finish on the GPU (default 5 s; the gateway reports a step done after
	// its tokens are on the host, so the wait is normally none); past it
	// that step evicts nothing. The engine's lock is held meanwhile.
	StepWait time.Duration
	// EvictTiming > 0 logs, every EvictTiming steps that evict, where
	// their eviction's time went (for developers: KVD_STEP_TIMING).
	EvictTiming int
}

// Engine is safe for concurrent use; calls are serialised by one mutex,
// which is what the per-step cost budget assumes (one round trip per step,
// microseconds of work under the lock).
type Engine struct {
	mu       sync.Mutex
	cfg      Config
	pool     pool.Pool
	alloc    *blocks.Allocator
	compute  kernels.Backend
	evicting []int           // layers with a decode policy
	mem      *kernels.Tensor // the pool as kvd maps it, for eviction
	// share is set when clients open the pool over CUDA IPC: each lease
	// gets a pair of events to order kvd's work against the client's.
	share    kernels.Sharer
	handle   *cuda.IPCHandle // nil for a pool shared by file descriptor
	gpu      string
	instance string
	start    time.Time
	clients  map[string]*client // by lease
	nextSeq  blocks.SeqID
	nextStep uint64
	steps    uint64
	seen     map[blocks.SeqID]int // tokens each sequence has been given
	evicted  uint64               // tokens evicted, all heads counted once
	returned uint64               // blocks freed by eviction
	timing   evictTiming
}

// evictTiming sums Config.EvictTiming steps' eviction.
type evictTiming struct {
	steps, tables int
	await, evict  time.Duration
}

// client is one lease: a client's sequences, mapped from the ids it chose to
// the allocator's, and its step in flight.
type client struct {
	name      string
	connected bool
	conn      uint64 // the connection the lease is on
	dropped   time.Time
	seqs      map[uint64]blocks.SeqID
	ids       map[blocks.SeqID]uint64 // the reverse of seqs
	inflight  *pending
	shrunk    []blocks.Shrink // evictions the client has not been told of (client ids)
	planBuf   blocks.PlanBuf  // embedded Plan's storage, reused step to step
	events    *events         // a GPU pool's ordering events
}

// events order one client's GPU work against kvd's: the client records
// step when a step's work is queued; kvd records evict after eviction.
type events struct {
	step, evict   cuda.Event
	stepH, evictH cuda.IPCHandle
}

// pending is a reserved step not yet reported done: enough to roll it back.
type pending struct {
	id      uint64
	appends []blocks.Append // allocator ids
	// shrunk are the evictions its reply told the client of: if the step
	// rolls back, the reply may have been lost, so they are told again.
	shrunk []blocks.Shrink
}

// New starts an engine over p.
func New(p pool.Pool, cfg Config) (*Engine, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	a, err := blocks.New(p.Layout(), cfg.Spec)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg: cfg, pool: p, alloc: a, compute: kernels.NewCPU(),
		instance: randomID(), start: cfg.Now(), clients: map[string]*client{}, seen: map[blocks.SeqID]int{},
	}
	switch p := p.(type) {
	case *pool.Host:
		e.mem = e.compute.FromHost(p.Float32s(), p.Layout().PoolElems())
	case *pool.Device:
		e.compute, e.mem = p.Backend(), p.Tensor()
		if p.Shared() {
			sh, ok := p.Backend().(kernels.Sharer)
			if !ok {
				return nil, fmt.Errorf("pool on %s is shared but its backend cannot share events", p.Kind())
			}
			e.share = sh
			if h, ok := p.Handle(); ok {
				e.handle = &h
			}
			if g, ok := p.Backend().(*kernels.CUDA); ok {
				e.gpu = g.Device().String()
			}
		}
	}
	if cfg.StepWait <= 0 {
		e.cfg.StepWait = 5 * time.Second
	}
	for i, l := range cfg.Spec {
		if l.Decode == "" {
			continue
		}
		if e.mem == nil {
			return nil, fmt.Errorf("layer %d: decode eviction needs a pool kvd can compute on", i)
		}
		e.evicting = append(e.evicting, i)
	}
	return e, nil
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var tracer = observability.Tracer("kvd/engine")

// FreeBlocks is the number of blocks no table holds.
func (e *Engine) FreeBlocks() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.alloc.Free()
}

// Pool is the engine's pool.
func (e *Engine) Pool() pool.Pool { return e.pool }

// Hello connects a client on connection conn (an id the caller gives each
// connection). An empty lease, or one kvd does not know (it expired, or kvd
// restarted), starts a new lease with no sequences; a known lease is
// reclaimed with its sequences, also from a connection kvd has not yet seen
// close: only the client that holds a lease knows it, so a hello with it
// means the old connection is dead.
func (e *Engine) Hello(ctx context.Context, req ipc.HelloRequest, conn uint64) (*ipc.HelloReply, error) {
	_, span := tracer.Start(ctx, "kvd.hello")
	defer span.End()
	e.mu.Lock()
	defer e.mu.Unlock()
	lease := req.Lease
	c, ok := e.clients[lease]
	var reclaimed []uint64
	switch {
	case ok:
		c.connected, c.conn = true, conn
		if c.inflight != nil && c.inflight.id == req.Done {
			e.done(c, req.Done, req.Failed)
		}
		e.rollback(c) // a step the client never saw finish
		for id := range c.seqs {
			reclaimed = append(reclaimed, id)
		}
	default:
		lease = randomID()
		c = &client{name: req.Name, connected: true, conn: conn, seqs: map[uint64]blocks.SeqID{}, ids: map[blocks.SeqID]uint64{}}
		if e.share != nil {
			ev, err := e.newEvents()
			if err != nil {
				return nil, fmt.Errorf("%w: CUDA IPC events: %v", ipc.ErrInternal, err)
			}
			c.events = ev
		}
		e.clients[lease] = c
	}
	l := e.pool.Layout()
	rep := &ipc.HelloReply{
		Instance: e.instance, Lease: lease, Reclaimed: reclaimed,
		PoolKind: e.pool.Kind(), PoolBytes: e.pool.Bytes(),
		NumBlocks: l.NumBlocks, FreeBlocks: e.alloc.Free(), BlockSize: l.BlockSize, Layers: len(e.cfg.Spec), KVHeads: l.KVHeads, HeadDim: l.HeadDim,
		DType: l.DType.String(), Policies: e.cfg.Spec,
	}
	if c.events != nil {
		rep.GPU = e.gpu
		if e.handle != nil {
			rep.PoolHandle = e.handle[:]
		}
		rep.StepEvent, rep.EvictEvent = c.events.stepH[:], c.events.evictH[:]
	}
	return rep, nil
}

func (e *Engine) newEvents() (*events, error) {
	step, stepH, err := e.share.NewEvent()
	if err != nil {
		return nil, err
	}
	evict, evictH, err := e.share.NewEvent()
	if err != nil {
		e.share.CloseEvent(step)
		return nil, err
	}
	return &events{step: step, evict: evict, stepH: stepH, evictH: evictH}, nil
}

// awaitStep waits, polling, until the client's last recorded step has run
// on the GPU, so that eviction reads and moves what the step wrote. It
// gives up after StepWait (a client that died mid-step may never finish).
func (e *Engine) awaitStep(c *client) error {
	if c.events == nil {
		return nil
	}
	deadline := time.Now().Add(e.cfg.StepWait)
	for pause := time.Microsecond; ; pause = min(2*pause, 200*time.Microsecond) {
		done, err := e.share.EventDone(c.events.step)
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %v", e.cfg.StepWait)
		}
		time.Sleep(pause)
	}
}

// Disconnect starts the lease's grace period when its connection conn
// closes (a connection the lease already moved away from does not count);
// Reap frees it when the grace has passed and the client has not come back.
// A step in flight stays pending: the client may have run it and not yet
// reported it, and says which when it reclaims the lease.
func (e *Engine) Disconnect(lease string, conn uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.clients[lease]; ok && c.conn == conn {
		c.connected = false
		c.dropped = e.cfg.Now()
	}
}

// Reap frees the sequences of every lease dropped longer than the grace
// period ago and returns how many leases it ended.
func (e *Engine) Reap() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now, n := e.cfg.Now(), 0
	for lease, c := range e.clients {
		if !c.connected && now.Sub(c.dropped) >= e.cfg.Grace {
			for _, id := range c.seqs {
				e.alloc.Close(id)
				delete(e.seen, id)
			}
			if c.events != nil {
				e.share.CloseEvent(c.events.step)
				e.share.CloseEvent(c.events.evict)
			}
			delete(e.clients, lease)
			n++
		}
	}
	return n
}

func (e *Engine) client(sess Session) (*client, error) {
	c, ok := e.clients[sess.Lease]
	if !ok || !c.connected {
		return nil, fmt.Errorf("%w: no session for this connection (send hello first)", ipc.ErrBadRequest)
	}
	if c.conn != sess.Conn {
		return nil, fmt.Errorf("%w: lease %.8s moved to a newer connection", ipc.ErrBadRequest, sess.Lease)
	}
	return c, nil
}

// enter starts a traced call on a session: it takes the engine's lock and
// finds the client; end releases both.
func (e *Engine) enter(ctx context.Context, name string, sess Session) (c *client, end func(), err error) {
	_, span := tracer.Start(ctx, name)
	e.mu.Lock()
	end = func() {
		e.mu.Unlock()
		span.End()
	}
	c, err = e.client(sess)
	return c, end, err
}

// Session names a client's lease and the connection it speaks on: a call
// from a connection the lease has moved away from is refused, so a late
// request on a dead connection cannot change what the new one sees.
type Session struct {
	Lease string
	Conn  uint64
}

// Open starts sequences with the client's ids; all or none.
func (e *Engine) Open(ctx context.Context, sess Session, ids []uint64) error {
	c, end, err := e.enter(ctx, "kvd.open", sess)
	defer end()
	if err != nil {
		return err
	}
	for i, id := range ids {
		if _, ok := c.seqs[id]; ok {
			return fmt.Errorf("sequence %d: %w", id, blocks.ErrSeqExists)
		}
		for _, o := range ids[:i] {
			if o == id {
				return fmt.Errorf("sequence %d: %w", id, blocks.ErrSeqExists)
			}
		}
	}
	for _, id := range ids {
		e.nextSeq++
		if err := e.alloc.Open(e.nextSeq); err != nil {
			return err
		}
		c.seqs[id] = e.nextSeq
		c.ids[e.nextSeq] = id
	}
	return nil
}

// Close ends sequences and frees their blocks. Unknown ids are an error,
// but the known ones are still closed.
func (e *Engine) Close(ctx context.Context, sess Session, ids []uint64) error {
	c, end, err := e.enter(ctx, "kvd.close", sess)
	defer end()
	if err != nil {
		return err
	}
	var first error
	for _, id := range ids {
		sid, ok := c.seqs[id]
		if !ok {
			if first == nil {
				first = fmt.Errorf("sequence %d: %w", id, blocks.ErrUnknownSeq)
			}
			continue
		}
		if c.inflight != nil {
			c.inflight.drop(sid)
		}
		e.alloc.Close(sid)
		delete(c.seqs, id)
		delete(c.ids, sid)
		delete(e.seen, sid)
		c.shrunk = slices.DeleteFunc(c.shrunk, func(s blocks.Shrink) bool { return uint64(s.Seq) == id })
	}
	return first
}

func (p *pending) drop(sid blocks.SeqID) {
	for i, a := range p.appends {
		if a.Seq == sid {
			p.appends = append(p.appends[:i], p.appends[i+1:]...)
			return
		}
	}
}

// Step reports the previous step done (if req.Done is set) and reserves
// slots for the next. A client has at most one step in flight.
func (e *Engine) Step(ctx context.Context, sess Session, req *ipc.StepRequest) (*ipc.StepReply, error) {
	c, end, err := e.enter(ctx, "kvd.step", sess)
	defer end()
	if err != nil {
		return nil, err
	}
	if req.Done != 0 {
		if err := e.done(c, req.Done, req.Failed); err != nil {
			return nil, err
		}
	}
	if c.inflight != nil {
		return nil, fmt.Errorf("%w: step %d is still in flight; report it done first", ipc.ErrBadRequest, c.inflight.id)
	}
	appends := make([]blocks.Append, len(req.Appends))
	for i, a := range req.Appends {
		sid, ok := c.seqs[uint64(a.Seq)]
		if !ok {
			return nil, fmt.Errorf("sequence %d: %w", a.Seq, blocks.ErrUnknownSeq)
		}
		appends[i] = blocks.Append{Seq: sid, N: a.N}
	}
	d, err := e.alloc.Reserve(appends)
	if err != nil {
		return nil, err
	}
	e.nextStep++
	for _, a := range appends {
		e.seen[a.Seq] += a.N
	}
	d.Shrunk, c.shrunk = c.shrunk, nil
	c.inflight = &pending{id: e.nextStep, appends: appends, shrunk: d.Shrunk}
	return &ipc.StepReply{StepID: e.nextStep, Free: uint32(e.alloc.Free()), Delta: *d}, nil
}

// StepDone reports a step finished; failed rolls its tokens back.
func (e *Engine) StepDone(ctx context.Context, sess Session, id uint64, failed bool) error {
	c, end, err := e.enter(ctx, "kvd.step_done", sess)
	defer end()
	if err != nil {
		return err
	}
	return e.done(c, id, failed)
}

func (e *Engine) done(c *client, id uint64, failed bool) error {
	if c.inflight == nil || c.inflight.id != id {
		return fmt.Errorf("%w: step %d is not in flight", ipc.ErrBadRequest, id)
	}
	if failed {
		e.rollback(c)
		return nil
	}
	e.evict(c, c.inflight.appends)
	c.inflight = nil
	e.steps++
	return nil
}

// evict cuts back every layer of the step's sequences that exceeds its
// decode budget by a block: the kernel compacts the kept tokens into the
// table's first blocks, and the rest of the table goes back to the pool.
func (e *Engine) evict(c *client, appends []blocks.Append) {
	if len(e.evicting) == 0 {
		return
	}
	l := e.pool.Layout()
	type cut struct {
		seq    blocks.SeqID
		layer  int
		tokens int
	}
	var jobs []kernels.EvictJob
	var cuts []cut
	for _, a := range appends {
		for _, layer := range e.evicting {
			p := e.cfg.Spec[layer]
			tokens, err := e.alloc.Tokens(a.Seq, layer)
			if err != nil || !p.Evicts(tokens, l.BlockSize) {
				continue
			}
			jobs = append(jobs, kernels.EvictJob{Blocks: e.alloc.Blocks(a.Seq, layer), Tokens: tokens, Keep: p.DecodeBudget, Sinks: p.Sinks, Recent: p.Recent})
			cuts = append(cuts, cut{a.Seq, layer, tokens})
		}
	}
	if len(jobs) == 0 {
		return
	}
	t0 := time.Now()
	if err := e.awaitStep(c); err != nil {
		// The layers stay over budget; a later step evicts them.
		slog.Warn("eviction skipped: the client's step did not finish on the GPU", "client", c.name, "err", err)
		return
	}
	if err := e.compute.Err(); err != nil { // an earlier call's, not this eviction's
		slog.Warn("GPU error before eviction", "err", err)
	}
	// One call for the step: a GPU waits once for all the tables.
	t1 := time.Now()
	e.compute.Evict(e.mem, l, jobs)
	if n := e.cfg.EvictTiming; n > 0 {
		t := &e.timing
		t.steps++
		t.tables += len(jobs)
		t.await += t1.Sub(t0)
		t.evict += time.Since(t1)
		if t.steps == n {
			ms := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(n)/1e6) }
			slog.Info("eviction timing", "steps", n, "tables", float64(t.tables)/float64(n), "await", ms(t.await), "evict", ms(t.evict))
			*t = evictTiming{}
		}
	}
	if err := e.compute.Err(); err != nil {
		// The entries may not have moved: keep the tables as they were
		// (over budget, but whole).
		slog.Error("eviction failed; tables left over budget", "client", c.name, "tables", len(jobs), "err", err)
		return
	}
	for _, k := range cuts {
		budget := e.cfg.Spec[k.layer].DecodeBudget
		freed, _ := e.alloc.Shrink(k.seq, k.layer, budget)
		e.evicted += uint64(k.tokens - budget)
		e.returned += uint64(freed)
		c.shrunk = append(c.shrunk, blocks.Shrink{Seq: blocks.SeqID(c.ids[k.seq]), Layer: uint32(k.layer), Tokens: uint32(budget)})
	}
	if c.events != nil {
		e.share.Record(c.events.evict)
	}
}

// rollback removes the tokens of the client's step in flight.
func (e *Engine) rollback(c *client) {
	if c.inflight == nil {
		return
	}
	for _, a := range c.inflight.appends {
		e.alloc.Rollback(a.Seq)
		e.seen[a.Seq] -= a.N
	}
	// Telling a client of a shrink it already applied is harmless (a table
	// never shrinks twice to the same size), so resend them all.
	resend := slices.DeleteFunc(c.inflight.shrunk, func(s blocks.Shrink) bool { _, open := c.seqs[uint64(s.Seq)]; return !open })
	c.shrunk = append(resend, c.shrunk...)
	c.inflight = nil
}

// Status is a snapshot for `kvd status`.
func (e *Engine) Status(ctx context.Context) *ipc.Status {
	_, span := tracer.Start(ctx, "kvd.status")
	defer span.End()
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.pool.Layout()
	now := e.cfg.Now()
	s := &ipc.Status{
		Instance: e.instance, PID: os.Getpid(), UptimeSeconds: now.Sub(e.start).Seconds(), Model: e.cfg.Model,
		PoolKind: e.pool.Kind(), PoolBytes: e.pool.Bytes(),
		BlockSize: l.BlockSize, BlockBytes: int64(l.BlockElems()) * 4, KVCacheDType: l.DType.String(),
		BlocksTotal: e.alloc.Total(), BlocksFree: e.alloc.Free(), BlocksUsed: e.alloc.Total() - e.alloc.Free(),
		Sequences: e.alloc.Len(), Steps: e.steps,
		Leases: []ipc.LeaseStatus{}, Layers: make([]ipc.LayerStatus, len(e.cfg.Spec)),
		TokensEvicted: e.evicted, BlocksReturned: e.returned,
	}
	if e.cfg.GPU != nil {
		s.GPU = e.cfg.GPU()
	}
	for _, c := range e.clients {
		ls := ipc.LeaseStatus{Name: c.name, Connected: c.connected, Sequences: len(c.seqs)}
		if c.connected {
			s.Clients++
		} else {
			ls.DisconnectedFor = now.Sub(c.dropped).Seconds()
			ls.GraceLeftSeconds = max(0, (e.cfg.Grace - now.Sub(c.dropped)).Seconds())
		}
		s.Leases = append(s.Leases, ls)
	}
	for i, p := range e.cfg.Spec {
		budget := p.Budget
		if p.DecodeBudget > 0 {
			budget = p.DecodeBudget
		}
		s.Layers[i] = ipc.LayerStatus{Index: i, Policy: p.String(), Budget: budget}
	}
	e.alloc.EachTable(func(layer, tokens, nblocks int) {
		s.Layers[layer].TokensRetained += tokens
		s.Layers[layer].BlocksUsed += nblocks
	})
	for _, n := range e.seen {
		s.TokensSeen += n
	}
	for i := range s.Layers {
		if r := s.Layers[i].TokensRetained; r > 0 {
			s.Layers[i].Compression = float64(s.TokensSeen) / float64(r)
		}
	}
	return s
}
