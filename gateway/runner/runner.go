// Package runner drives the model over kvd's paged KV cache: it reserves
// each step's slots from kvd (in process or over the socket), builds the
// step's batch, runs the forward pass, reports the step done, and tracks
// every sequence's position. The scheduler decides what goes into a step;
// the runner only executes it.
//
// runner must not import the HTTP layer.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

// KV is the runner's view of kvd: the pool's memory and the block tables.
// engine.Local (embedded) and Sidecar (ipc) implement it.
type KV interface {
	Layout() shm.Layout
	// Spec is every layer's sparsity policy.
	Spec() policy.Spec
	// PoolTensor is the pool as backend b addresses it; it may change
	// after a reconnect to a restarted kvd, so callers fetch it every step.
	PoolTensor(b kernels.Backend) *kernels.Tensor
	Open(ctx context.Context, ids ...uint64) error
	Close(ctx context.Context, ids ...uint64) error
	// Reserve appends a step's tokens and returns the step id and its
	// plan, which the forward pass builds a layer at a time as it reaches
	// each layer (blocks.StepPlan), before Done.
	Reserve(ctx context.Context, appends []blocks.Append) (uint64, *blocks.StepPlan, error)
	// Done reports the step finished (failed rolls it back).
	Done(id uint64, failed bool)
	// FreeBlocks is kvd's count of free blocks as of the last reply.
	FreeBlocks() int
	// Abandon forgets sequences now and closes them in kvd when it is
	// reached again (for sequences of a step that failed with kvd away).
	Abandon(ids ...uint64)
}

// Sidecar adapts an ipc.Client to KV. With kvd's pool on the GPU it opens
// the pool and the lease's two events over CUDA IPC (again after kvd
// restarts), records the step event once a step's work is queued, before
// reporting it done, and makes each step's work wait for the eviction
// event, so kvd moves cache entries only between the gateway's steps.
type Sidecar struct {
	*ipc.Client
	gpu *sharedPool
}

// sharedPool is a GPU pool as this process opened it.
type sharedPool struct {
	b           kernels.Sharer
	key         string // kvd instance and lease the handles below belong to
	pool        *kernels.Tensor
	step, evict cuda.Event
	noEvents    bool // KVD_IPC_EVENTS=0 (developers): no events while kvd's policy does not evict (skipEvents)
}

// NewSidecar checks that b can address kvd's pool: the CPU backend a host
// pool, a GPU backend a GPU pool.
func NewSidecar(c *ipc.Client, b kernels.Backend) (*Sidecar, error) {
	h := c.Hello()
	if h.GPU == "" {
		if _, ok := b.(*kernels.CPU); !ok {
			return nil, fmt.Errorf("kvd's pool is %s host memory, which the %s backend cannot use: start kvd with --device cuda, or run the gateway with --device cpu", h.PoolKind, b.Name())
		}
		return &Sidecar{Client: c}, nil
	}
	sh, ok := b.(kernels.Sharer)
	if !ok {
		return nil, fmt.Errorf("kvd's pool is in GPU memory (%s), which the %s backend cannot use: run the gateway with --device cuda, or kvd with --device cpu", h.GPU, b.Name())
	}
	s := &Sidecar{Client: c, gpu: &sharedPool{b: sh}}
	// When kvd goes away, unmap its pool at once: the mapping would keep
	// the memory from the kvd that replaces it. Work of ours may still be
	// queued on it (a step's reserve made while the one before runs,
	// AsyncScheduling): close waits for the device first.
	c.OnDrop(s.gpu.close)
	s.gpu.noEvents = os.Getenv("KVD_IPC_EVENTS") == "0"
	return s, s.open()
}

// skipEvents reports whether the steps go without interprocess events:
// for developers measuring what they cost (KVD_IPC_EVENTS=0), and only
// while kvd's policy has no decode-time eviction, under which kvd never
// moves entries and the order the events keep is not needed. Checked each
// step: a kvd restarted on the socket may evict where the first did not.
func (s *Sidecar) skipEvents() bool { return s.gpu.noEvents && !evicts(s.Spec()) }

func evicts(spec policy.Spec) bool {
	for _, p := range spec {
		if p.Decode != "" {
			return true
		}
	}
	return false
}

// open (re)opens the pool and events when kvd or the lease changed.
func (s *Sidecar) open() error {
	err := s.openOnce()
	if err != nil {
		// The file descriptor was spent: reconnecting brings a new one.
		s.ForceDisconnect()
	}
	return err
}

func (s *Sidecar) openOnce() error {
	g := s.gpu
	h := s.Hello()
	key := h.Instance + "/" + h.Lease
	if g.key == key {
		return nil
	}
	g.close()
	if h.GPU == "" || len(h.StepEvent) != 64 || len(h.EvictEvent) != 64 {
		return fmt.Errorf("kvd restarted with its pool in host memory (%s), which this GPU gateway cannot use: restart the gateway, or kvd with --device cuda", h.PoolKind)
	}
	var pool *kernels.Tensor
	var err error
	if h.PoolHandle != nil {
		pool, err = g.b.OpenShared(cuda.IPCHandle(h.PoolHandle), s.Layout().PoolElems())
	} else {
		fd := s.TakeGPUPoolFD()
		if fd < 0 {
			return fmt.Errorf("kvd's GPU pool came without its file descriptor")
		}
		pool, err = g.b.OpenSharedFD(fd, s.Layout().PoolElems())
		unix.Close(fd) // the mapping holds the memory; the fd would keep a dead kvd's
	}
	if err != nil {
		return fmt.Errorf("opening kvd's GPU pool over CUDA IPC (kvd and the gateway must see the same GPU): %w", err)
	}
	step, err := g.b.OpenEvent(cuda.IPCHandle(h.StepEvent))
	if err != nil {
		g.b.Free(pool)
		return fmt.Errorf("opening kvd's step event: %w", err)
	}
	evict, err := g.b.OpenEvent(cuda.IPCHandle(h.EvictEvent))
	if err != nil {
		g.b.Free(pool)
		g.b.CloseEvent(step)
		return fmt.Errorf("opening kvd's eviction event: %w", err)
	}
	g.key, g.pool, g.step, g.evict = key, pool, step, evict
	return nil
}

func (g *sharedPool) close() {
	if g.key == "" {
		return
	}
	// A step prepared ahead (AsyncScheduling) reserves while the one
	// before may still run on the pool: let it finish before unmapping.
	if s, ok := g.b.(interface{ Synchronize() error }); ok {
		s.Synchronize()
	}
	g.b.Free(g.pool)
	g.b.CloseEvent(g.step)
	g.b.CloseEvent(g.evict)
	g.key, g.pool = "", nil
}

func (s *Sidecar) PoolTensor(b kernels.Backend) *kernels.Tensor {
	if s.gpu != nil {
		return s.gpu.pool
	}
	return b.FromHost(s.Pool().Float32s(), s.Layout().PoolElems())
}

// samePoolKind fails when kvd came back (restarted) with its pool on the
// other side of the PCIe bus from this gateway's backend.
func (s *Sidecar) samePoolKind() error {
	h := s.Hello()
	switch {
	case h.GPU != "" && s.gpu == nil:
		return fmt.Errorf("kvd restarted with its pool in GPU memory (%s), which this CPU gateway cannot use: restart the gateway, or kvd with --device cpu", h.GPU)
	case h.GPU == "" && s.gpu != nil:
		return fmt.Errorf("kvd restarted with its pool in host memory (%s), which this GPU gateway cannot use: restart the gateway, or kvd with --device cuda", h.PoolKind)
	}
	return nil
}

func (s *Sidecar) Spec() policy.Spec { return s.Hello().Policies }

func (s *Sidecar) Reserve(ctx context.Context, appends []blocks.Append) (uint64, *blocks.StepPlan, error) {
	st, err := s.Step(ctx, appends)
	if err != nil {
		return 0, nil, err
	}
	plan, err := s.StepPlan(st)
	if err == nil {
		err = s.samePoolKind()
	}
	if err == nil && s.gpu != nil {
		if err = s.open(); err == nil && !s.skipEvents() {
			s.gpu.b.WaitEvent(s.gpu.evict)
		}
	}
	if err != nil {
		s.Client.Done(st.ID, true)
		return 0, nil, err
	}
	return st.ID, plan, nil
}

// Done records the step event (on a GPU pool) and reports the step.
func (s *Sidecar) Done(id uint64, failed bool) {
	if s.gpu != nil && !s.skipEvents() && s.gpu.key != "" { // not after the pool was closed with its events
		s.gpu.b.Record(s.gpu.step)
	}
	s.Client.Done(id, failed)
}

// Shutdown unmaps a GPU pool and closes the connection.
func (s *Sidecar) Shutdown() error {
	if s.gpu != nil {
		s.gpu.close()
	}
	return s.Client.Shutdown()
}

// Runner executes steps. Not safe for concurrent use.
type Runner struct {
	m   *model.Model
	kv  KV
	pos map[uint64]int // tokens seen, which is the next position
	// held counts, by sequence, the prepared steps that have it and have
	// not finished running: such a sequence may not be closed (its blocks
	// could go to another client while this step's kernels still write
	// them).
	held    map[uint64]int
	timing  *stepTiming  // KVD_STEP_TIMING=N: where each step's time goes, every N steps
	lastEnd time.Time    // when the last step's tokens were back (stepTiming)
	prof    *stepProfile // KVD_KERNEL_PROFILE=FROM:N: N steps' kernels
}

// stepTiming sums, for developers, where decode steps' time goes: kvd's
// reserve (and its plan; for a step prepared ahead, made while the step
// before ran), the forward pass with sampling (until the tokens are on the
// host; with a step prepared ahead in it, that reserve too), the done
// report, and the host's time from the step before's tokens to this
// step's forward pass (handing out tokens, scheduling, and without async
// scheduling the reserve): what the device waits between steps, less the
// launch of the step's first kernel. Steps with a prompt are left out.
type stepTiming struct {
	every                           int
	steps, rows                     int
	reserve, forward, done, between time.Duration
	out                             io.Writer
}

func (t *stepTiming) add(seqs, rows int, reserve, forward, done, between time.Duration) {
	if rows != seqs {
		return // a prefill
	}
	t.steps++
	t.rows += rows
	t.reserve += reserve
	t.forward += forward
	t.done += done
	t.between += between
	if t.steps == t.every {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 / float64(t.steps) }
		fmt.Fprintf(t.out, "step timing: %d decode steps of %.1f sequences: reserve %.3f ms, forward+sample %.3f ms, done %.3f ms, host between steps %.3f ms\n",
			t.steps, float64(t.rows)/float64(t.steps), ms(t.reserve), ms(t.forward), ms(t.done), ms(t.between))
		*t = stepTiming{every: t.every, out: t.out}
	}
}

// stepProfile is KVD_KERNEL_PROFILE=FROM:N, for developers: the runner's
// steps FROM..FROM+N-1 (counting every step, prompts' too) timed kernel by
// kernel on a backend that can (CUDA's kernels.Profile), the table written
// to out (stderr). A served run's steady state, mixed prompt chunks and
// decodes, is what bench/forward's --kernel-profile does not see. The
// profile stops before the last step reports done, so an embedded pool's
// eviction between steps (launched from another goroutine) is not in it;
// a step that fails inside the window abandons the profile.
type stepProfile struct {
	from, n, step int
	on            bool
	rows, seqs    int
	start         time.Time
	busy          time.Duration // the steps' own time, host work included
	out           io.Writer
}

type profiler interface {
	StartProfile()
	MarkProfileStep()
	StopProfile() (kernels.Profile, error)
}

// parseStepProfile reads KVD_KERNEL_PROFILE's FROM:N.
func parseStepProfile(v string) (*stepProfile, error) {
	f, n, ok := strings.Cut(v, ":")
	from, err1 := strconv.Atoi(f)
	steps, err2 := strconv.Atoi(n)
	if !ok || err1 != nil || err2 != nil || from < 0 || steps <= 0 {
		return nil, fmt.Errorf("KVD_KERNEL_PROFILE=%q: want FROM:N, the first step to profile (0 on) and how many (1 on)", v)
	}
	return &stepProfile{from: from, n: steps, out: os.Stderr}, nil
}

// The hooks below do nothing on a nil profile (KVD_KERNEL_PROFILE unset).

func (p *stepProfile) before(b kernels.Backend) {
	if p == nil {
		return
	}
	pr, ok := b.(profiler)
	if ok && p.step == p.from && !p.on {
		pr.StartProfile()
		p.on, p.start = true, time.Now()
		p.rows, p.seqs, p.busy = 0, 0, 0
	}
	if p.on {
		pr.MarkProfileStep() // the device's wait for this step's first kernel counts as between steps
	}
}

// after counts a step that ran; the window's last stops the profile and
// prints it.
func (p *stepProfile) after(b kernels.Backend, seqs, rows int, took time.Duration) {
	if p == nil {
		return
	}
	p.step++
	if !p.on {
		return
	}
	p.rows += rows
	p.seqs += seqs
	p.busy += took
	if p.step < p.from+p.n {
		return
	}
	wall := time.Since(p.start)
	p.on = false
	prof, err := b.(profiler).StopProfile()
	if err != nil {
		fmt.Fprintf(p.out, "kernel profile: %v\n", err)
		return
	}
	fmt.Fprintf(p.out, "kernel profile: steps %d..%d, %.1f rows and %.1f sequences a step, %.3f ms a step of wall time (%.3f in StepSample)\n%s",
		p.from, p.from+p.n-1, float64(p.rows)/float64(p.n), float64(p.seqs)/float64(p.n),
		wall.Seconds()*1e3/float64(p.n), p.busy.Seconds()*1e3/float64(p.n), prof.Markdown(p.n))
}

// abandon stops a running profile without printing its table: a step of
// the window failed, or the runner is shutting down.
func (p *stepProfile) abandon(b kernels.Backend, why error) {
	if p == nil || !p.on {
		return
	}
	p.on = false
	b.(profiler).StopProfile()
	fmt.Fprintf(p.out, "kernel profile: abandoned at step %d: %v\n", p.step, why)
}

// New returns a runner of m over kv. The pool's geometry must match m.
func New(m *model.Model, kv KV) (*Runner, error) {
	c, l := m.Config, kv.Layout()
	if len(kv.Spec()) != c.NumLayers {
		return nil, fmt.Errorf("kvd's pool is set up for %d layers, the model has %d: start kvd with --model for this model", len(kv.Spec()), c.NumLayers)
	}
	if l.KVHeads != c.NumKVHeads || l.HeadDim != c.HeadDim {
		return nil, fmt.Errorf("kvd's pool is laid out for %d KV heads of dim %d, the model has %d of dim %d: start kvd with --model for this model",
			l.KVHeads, l.HeadDim, c.NumKVHeads, c.HeadDim)
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("kvd's pool holds K and V as %v: %w", l.DType, err)
	}
	r := &Runner{m: m, kv: kv, pos: map[uint64]int{}, held: map[uint64]int{}}
	if n, err := strconv.Atoi(os.Getenv("KVD_STEP_TIMING")); err == nil && n > 0 {
		r.timing = &stepTiming{every: n, out: os.Stderr}
	}
	if v := os.Getenv("KVD_KERNEL_PROFILE"); v != "" {
		p, err := parseStepProfile(v)
		if err != nil {
			return nil, err
		}
		r.prof = p
	}
	return r, nil
}

// NewEmbedded runs kvd's engine in process with a pool of numBlocks
// layer-blocks of blockSize tokens, the layers following spec (nil: all
// full): the single-process mode.
func NewEmbedded(m *model.Model, numBlocks, blockSize int, spec policy.Spec) (*Runner, error) {
	c := m.Config
	if spec == nil {
		spec = policy.AllFull(c.NumLayers)
	}
	kv, err := engine.NewLocalOn(m.Backend(), shm.Layout{NumBlocks: numBlocks, BlockSize: blockSize, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim}, spec)
	if err != nil {
		return nil, err
	}
	r, err := New(m, kv)
	if err != nil {
		kv.Shutdown() // the pool (a device pool's GPU memory) goes back
		return nil, err
	}
	return r, nil
}

// BlocksFor returns how many layer-blocks hold n tokens of context in every
// layer, the null block included: a pool-sizing helper.
func BlocksFor(c *model.Config, n, blockSize int) int {
	return c.NumLayers*((n+blockSize-1)/blockSize) + 1
}

// Shutdown releases an embedded pool (the GPU memory of a device pool);
// a sidecar's pool belongs to kvd.
func (r *Runner) Shutdown() error {
	r.prof.abandon(r.m.Backend(), errors.New("the runner shut down"))
	if l, ok := r.kv.(*engine.Local); ok {
		return l.Shutdown()
	}
	return nil
}

// Model is the runner's model.
func (r *Runner) Model() *model.Model { return r.m }

// Open starts a sequence.
func (r *Runner) Open(ctx context.Context, id uint64) error {
	if err := r.kv.Open(ctx, id); err != nil {
		return err
	}
	r.pos[id] = 0
	return nil
}

// Close ends a sequence and frees its blocks. A sequence in a step that
// was prepared and has not finished running cannot be closed yet.
func (r *Runner) Close(ctx context.Context, id uint64) error {
	if r.held[id] > 0 {
		return fmt.Errorf("sequence %d: in a step prepared and not yet run: close it after the step", id)
	}
	delete(r.pos, id)
	return r.kv.Close(ctx, id)
}

// Forget drops a sequence that kvd no longer has (it restarted) without
// asking kvd to close it.
func (r *Runner) Forget(id uint64) { delete(r.pos, id) }

// Abandon drops a sequence now and has kvd close it when it is reached.
func (r *Runner) Abandon(id uint64) {
	delete(r.pos, id)
	r.kv.Abandon(id)
}

// Chunkable reports whether a prompt may be prefilled over several steps:
// every layer keeps its whole context, so a chunk's attention over the
// chunks before it (in kvd's pool) is the whole prompt's. A layer that
// selects at the end of prefill (SnapKV, a window) needs the prompt at
// once, and one that evicts while decoding would evict between chunks.
func (r *Runner) Chunkable() bool {
	for _, p := range r.kv.Spec() {
		if p.Selects() || p.Decode != "" {
			return false
		}
	}
	return true
}

// FreeBlocks is kvd's free block count as of its last reply.
func (r *Runner) FreeBlocks() int { return r.kv.FreeBlocks() }

// TotalBlocks is the number of blocks in kvd's pool.
func (r *Runner) TotalBlocks() int { return r.kv.Layout().NumBlocks - 1 }

// BlocksNeeded is how many blocks a prompt of n tokens takes, over all
// layers, under kvd's policies.
func (r *Runner) BlocksNeeded(n int) int {
	bs, need := r.kv.Layout().BlockSize, 0
	for _, p := range r.kv.Spec() {
		need += (p.PrefillKeep(0, n) + bs - 1) / bs
	}
	return need
}

// Work is one sequence's share of a step.
type Work struct {
	Seq    uint64
	Tokens []int32
	// AllLogits asks for logits after every token (prompt log-probs);
	// otherwise only after the last.
	AllLogits bool
	// Draw, when set, draws the next token from the last row's logits
	// where they are (the GPU), with these settings (StepSample).
	Draw *kernels.SampleParams
	// NoLogits leaves the logits where they were computed: only a drawn
	// token comes back (StepSample).
	NoLogits bool
}

// Step runs one forward pass and returns each Work's logits:
// [rows, VocabSize] where rows is len(Tokens) or 1.
func (r *Runner) Step(ctx context.Context, work []Work) ([][]float32, error) {
	for _, w := range work {
		if w.Draw != nil || w.NoLogits {
			return nil, fmt.Errorf("sequence %d: drawing on the device needs StepSample", w.Seq)
		}
	}
	lg, _, err := r.StepSample(ctx, work)
	return lg, err
}

// StepSample is Step that also draws a token, tokens[i], for each Work with
// Draw set, on the backend; a NoLogits Work's logits are nil.
func (r *Runner) StepSample(ctx context.Context, work []Work) (logits [][]float32, tokens []int32, err error) {
	p, err := r.Prepare(ctx, work)
	if err != nil {
		return nil, nil, err
	}
	return r.Run(ctx, p, nil)
}

// Prepared is a step reserved with kvd (Prepare) that has not run yet
// (Run). Its Works' Tokens may be written until Run: a decode's token
// drawn by the step before, which a step prepared ahead does not know.
type Prepared struct {
	id     uint64
	plan   *blocks.StepPlan
	work   []Work
	bt     *model.Batch
	host   []bool // per logit row: bring its logits to the host
	draws  model.Draws
	drawAt []int // each Work's index in draws, or -1
	rows   int
	start  time.Time     // Prepare's
	hold   time.Duration // Prepare's reserve
	done   bool          // reported done to kvd (Run with ahead, or Cancel)
	gen    uint64        // kvd's connection it was reserved on (generationer)
}

// ErrStaleStep is Run's error for a step reserved on a connection to kvd
// that has since been remade: kvd rolled it back (or restarted), so it
// does not run; its sequences' positions are as before it.
var ErrStaleStep = errors.New("step reserved on an earlier connection to kvd")

// generationer is a KV whose connection to kvd may be remade (Sidecar): a
// step reserved on one connection cannot run after a reconnect, which
// rolled it back.
type generationer interface{ Generation() uint64 }

// generation is r's kvd connection's, or 0 for a KV that does not reconnect.
func (r *Runner) generation() uint64 {
	if g, ok := r.kv.(generationer); ok {
		return g.Generation()
	}
	return 0
}

// Prepare checks a step's work and reserves its slots with kvd; the
// sequences' positions move past the step's tokens at once, so that the
// next step can be prepared while this one runs (Run's ahead).
func (r *Runner) Prepare(ctx context.Context, work []Work) (*Prepared, error) {
	p := &Prepared{work: work, bt: &model.Batch{Seqs: make([]model.Seq, len(work))}, drawAt: make([]int, len(work)), start: time.Now()}
	appends := make([]blocks.Append, len(work))
	bt := p.bt
	row := int32(0)
	for i, w := range work {
		pos, ok := r.pos[w.Seq]
		if !ok {
			return nil, fmt.Errorf("sequence %d: %w", w.Seq, blocks.ErrUnknownSeq)
		}
		if len(w.Tokens) == 0 {
			return nil, fmt.Errorf("sequence %d: no tokens in step", w.Seq)
		}
		if w.NoLogits && w.AllLogits {
			return nil, fmt.Errorf("sequence %d: NoLogits with AllLogits", w.Seq)
		}
		appends[i] = blocks.Append{Seq: blocks.SeqID(w.Seq), N: len(w.Tokens)}
		bt.Seqs[i] = model.Seq{Tokens: w.Tokens, Pos: pos}
		first := row
		row += int32(len(w.Tokens))
		if w.AllLogits {
			for j := first; j < row; j++ {
				bt.LogitRows = append(bt.LogitRows, j)
				p.host = append(p.host, true)
			}
		} else {
			bt.LogitRows = append(bt.LogitRows, row-1)
			p.host = append(p.host, !w.NoLogits)
		}
		p.drawAt[i] = -1
		if w.Draw != nil {
			p.drawAt[i] = len(p.draws.Rows)
			p.draws.Rows = append(p.draws.Rows, int32(len(bt.LogitRows)-1))
			p.draws.Params = append(p.draws.Params, *w.Draw)
		}
	}
	p.rows = int(row)
	id, plan, err := r.kv.Reserve(ctx, appends)
	if err != nil {
		return nil, err
	}
	// Each layer's tables are copied into its plan as the forward pass
	// reaches the layer, while the device runs the layers before, not
	// here with the device idle (blocks.StepPlan).
	spec := r.kv.Spec()
	if plan.Layers() != len(spec) {
		r.kv.Done(id, true)
		return nil, fmt.Errorf("kvd planned %d layers, its spec has %d", plan.Layers(), len(spec))
	}
	p.id, p.plan, p.hold, p.gen = id, plan, time.Since(p.start), r.generation()
	bt.NumLayers = plan.Layers()
	bt.LayerPlan = func(l int) model.LayerKV {
		lp := plan.Layer(l)
		return model.LayerKV{Policy: spec[l], Kept: lp.Kept, Slots: lp.Slots, Attn: kernels.AttnBatch{KVLen: lp.KVLen, BlockIndptr: lp.BlockIndptr, Blocks: lp.Blocks}}
	}
	for _, w := range work {
		r.pos[w.Seq] += len(w.Tokens)
		r.held[w.Seq]++
	}
	return p, nil
}

// release ends a prepared step's hold on its sequences.
func (r *Runner) release(p *Prepared) {
	for _, w := range p.work {
		if r.held[w.Seq]--; r.held[w.Seq] <= 0 {
			delete(r.held, w.Seq)
		}
	}
}

// CanRunAhead reports whether a step may be prepared while the one before
// it runs (Run's ahead): no layer evicts between steps, which kvd does
// once a step is reported done and the next step's reply waits for.
func (r *Runner) CanRunAhead() bool { return !evicts(r.kv.Spec()) }

// Cancel gives back a prepared step that will not run: kvd rolls its
// tokens back, and its sequences' positions go back.
func (r *Runner) Cancel(p *Prepared) {
	if p.done {
		return
	}
	r.kv.Done(p.id, true)
	r.drop(p)
}

// drop ends a prepared step that does not run, on the runner's side: its
// sequences' positions go back before it, and its hold on them ends.
func (r *Runner) drop(p *Prepared) {
	p.done = true
	r.unwind(p)
	r.release(p)
}

// unwind moves a step's sequences' positions back before it.
func (r *Runner) unwind(p *Prepared) {
	for _, w := range p.work {
		if _, ok := r.pos[w.Seq]; ok {
			r.pos[w.Seq] -= len(w.Tokens)
		}
	}
}

// Run runs a prepared step and returns each Work's logits (nil for a
// NoLogits one) and the tokens drawn for those with Draw set. With ahead
// set, the step is reported done to kvd once all its work is queued, and
// ahead runs then, before the host waits for the device: it may prepare
// the next step, whose reserve and host work then overlap this step's
// kernels. A step that fails after that stays done in kvd (its tokens
// are not rolled back): the caller ends its sequences.
func (r *Runner) Run(ctx context.Context, p *Prepared, ahead func()) (logits [][]float32, tokens []int32, err error) {
	if p.done {
		return nil, nil, fmt.Errorf("step %d: already run or cancelled", p.id)
	}
	if r.generation() != p.gen {
		// The connection to kvd was remade since the step was reserved
		// (prepared ahead): kvd rolled it back, and a restarted kvd's
		// pool is another. Nothing runs; the caller schedules again (and
		// recomputes everything if kvd restarted).
		r.drop(p)
		return nil, nil, fmt.Errorf("step %d: %w", p.id, ErrStaleStep)
	}
	b := r.m.Backend()
	r.prof.before(b)
	t1 := time.Now()
	cache := &model.Cache{Pool: r.kv.PoolTensor(b), Layout: r.kv.Layout()}
	if ahead != nil {
		p.bt.BeforeWait = func() {
			p.done = true
			r.kv.Done(p.id, false)
			ahead()
		}
	}
	flat, drawn, err := r.m.ForwardSample(ctx, p.bt, cache, p.host, &p.draws)
	t2 := time.Now()
	r.release(p)
	// Before Done: an embedded pool's eviction runs from it, on another
	// goroutine.
	if err != nil {
		r.prof.abandon(b, err)
	} else {
		r.prof.after(b, len(p.work), p.rows, p.hold+t2.Sub(t1))
	}
	if !p.done {
		p.done = true
		r.kv.Done(p.id, err != nil)
		if err != nil {
			r.unwind(p)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if r.timing != nil {
		var between time.Duration
		if !r.lastEnd.IsZero() {
			between = t1.Sub(r.lastEnd)
		}
		r.timing.add(len(p.work), p.rows, p.hold, t2.Sub(t1), time.Since(t2), between)
		r.lastEnd = time.Now()
	}
	v := r.m.Config.VocabSize
	logits = make([][]float32, len(p.work))
	if len(p.draws.Rows) > 0 {
		tokens = make([]int32, len(p.work))
	}
	off := 0 // rows of flat taken
	for i, w := range p.work {
		n := 1
		if w.AllLogits {
			n = len(w.Tokens)
		}
		if p.drawAt[i] >= 0 {
			tokens[i] = drawn[p.drawAt[i]]
		}
		if !w.NoLogits {
			logits[i] = flat[off*v : (off+n)*v]
			off += n
		}
	}
	return logits, tokens, nil
}

// Greedy prefills prompt as one sequence and decodes up to maxTokens tokens
// greedily, stopping after any token in stop. It returns the new tokens.
func (r *Runner) Greedy(ctx context.Context, id uint64, prompt []int32, maxTokens int, stop []int32, emit func(int32)) ([]int32, error) {
	if err := r.Open(ctx, id); err != nil {
		return nil, err
	}
	defer r.Close(context.WithoutCancel(ctx), id)
	var out []int32
	next := prompt
	for len(out) < maxTokens {
		_, am, err := r.StepSample(ctx, []Work{{Seq: id, Tokens: next, Draw: &kernels.SampleParams{}, NoLogits: true}})
		if err != nil {
			return out, err
		}
		t := am[0]
		out = append(out, t)
		if emit != nil {
			emit(t)
		}
		for _, s := range stop {
			if t == s {
				return out, nil
			}
		}
		next = []int32{t}
	}
	return out, nil
}
