package sched

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/gateway/sample"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/observability"
)

// Config bounds the scheduler.
type Config struct {
	MaxNumSeqs     int // running sequences at most
	MaxBatchTokens int // tokens per step at most (a prompt that cannot be chunked may exceed it)
	// ChunkedPrefill splits prompts over steps of MaxBatchTokens, next to
	// the running decodes, where the runner allows (Runner.Chunkable) and
	// the request does not score its prompt.
	ChunkedPrefill bool
	MaxModelLen    int // prompt + generated tokens at most
	MaxQueue       int // waiting requests at most; more get ErrQueueFull
	// AsyncScheduling schedules and reserves each step while the one
	// before runs, where the runner allows (Runner.CanRunAhead): the
	// host's work between steps (kvd's reserve, the scheduling) then
	// overlaps the device's, and only handing out the tokens and
	// launching are left between them. A request that stops on a token
	// has already been put in the next step: it runs there once more and
	// its output is dropped.
	AsyncScheduling bool
	// AsyncDefault says AsyncScheduling is the default rather than asked
	// for: where the runner cannot run ahead (checked each step: a kvd
	// restarted with another policy may change it), that is logged at
	// info level, not as a warning.
	AsyncDefault bool
	Logger       *slog.Logger
}

// Scheduler batches requests onto one runner. Submit is safe for concurrent
// use; Run must be called once.
type Scheduler struct {
	r   *runner.Runner
	cfg Config
	log *slog.Logger
	m   *metrics

	mu       sync.Mutex
	incoming []*Request
	wake     chan struct{}
	stopped  bool

	// Owned by the Run goroutine.
	waiting []*Request // FIFO; preempted requests go back to the front
	running []*Request // in admission order
	nextID  uint64
	// restarted is set when a call found kvd restarted: every running
	// request is recomputed before the next step.
	restarted bool
	// ahead is the next step, scheduled and reserved while the last one
	// ran (AsyncScheduling).
	ahead *aheadStep
	// counts, for tests: steps run as prepared ahead, rows of requests
	// that had finished before their step ran, preemptions.
	ranAhead, ghosts, preempted int
	warnedAhead                 bool // said once that AsyncScheduling cannot run

	numRunning atomic.Int64 // len(running), for the metrics callback
}

var tracer = observability.Tracer("gateway/sched")

// New returns a scheduler over r.
func New(r *runner.Runner, cfg Config) (*Scheduler, error) {
	if cfg.MaxNumSeqs < 1 || cfg.MaxBatchTokens < 1 || cfg.MaxModelLen < 1 || cfg.MaxQueue < 1 {
		return nil, fmt.Errorf("sched: every limit must be positive: %+v", cfg)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Scheduler{r: r, cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1)}
	m, err := newMetrics(s)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Submit queues a request; it fails at once with ErrQueueFull when
// MaxQueue requests are already waiting.
func (s *Scheduler) Submit(req *Request) error {
	if req.Params.MaxTokens < 0 || len(req.Prompt) >= s.cfg.MaxModelLen || req.Params.MaxTokens > s.cfg.MaxModelLen-len(req.Prompt) {
		return fmt.Errorf("%w: %d prompt tokens and %d new ones exceed the context of %d", ErrTooLarge, len(req.Prompt), req.Params.MaxTokens, s.cfg.MaxModelLen)
	}
	req.box.init()
	req.tokens = append([]int32(nil), req.Prompt...)
	req.seed = requestSeed(req.Params.Sampling.Seed)
	req.arrived = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	if s.m.waiting.Load() >= int64(s.cfg.MaxQueue) {
		return ErrQueueFull
	}
	_, req.span = tracer.Start(req.Ctx, "queue")
	s.incoming = append(s.incoming, req)
	s.m.waiting.Add(1)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run steps until ctx ends, then fails whatever is left with ErrStopped.
func (s *Scheduler) Run(ctx context.Context) {
	defer s.shutdown()
	for ctx.Err() == nil {
		s.collect()
		s.dropCancelled()
		s.handleRestart()
		s.numRunning.Store(int64(len(s.running)))
		if s.ahead == nil && len(s.running) == 0 && len(s.waiting) == 0 {
			select {
			case <-ctx.Done():
			case <-s.wake:
			}
			continue
		}
		if !s.step(ctx) {
			// Nothing could run (the pool is held by others): wait for a
			// submission or a moment, instead of spinning.
			select {
			case <-ctx.Done():
			case <-s.wake:
			case <-time.After(5 * time.Millisecond):
			}
		}
		s.handleRestart()
		s.numRunning.Store(int64(len(s.running)))
	}
}

// collect moves submitted requests to the waiting queue.
func (s *Scheduler) collect() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.incoming {
		s.nextID++
		r.id = s.nextID
		s.waiting = append(s.waiting, r)
	}
	s.incoming = s.incoming[:0]
}

// dropCancelled aborts requests whose clients left, freeing their blocks.
func (s *Scheduler) dropCancelled() {
	cancelled := func(r *Request) bool {
		if r.Ctx.Err() == nil {
			return false
		}
		s.finish(r, FinishAbort, nil)
		return true
	}
	s.running = slices.DeleteFunc(s.running, cancelled)
	n := len(s.waiting)
	s.waiting = slices.DeleteFunc(s.waiting, cancelled)
	s.m.waiting.Add(int64(len(s.waiting) - n))
}

// item is one request's share of a step.
type item struct {
	req     *Request
	tokens  []int32
	prefill bool
	partial bool // a prompt chunk that does not end the prompt: nothing is sampled
	// gen is how many tokens the request has generated when this item's
	// is drawn (the draw's index for a seeded request).
	gen int
	// fill says tokens is the token the step before draws, written into
	// it once that step is over (a step scheduled ahead).
	fill bool
}

// aheadStep is a step scheduled and reserved while the one before it ran.
type aheadStep struct {
	batch    []item
	prep     *runner.Prepared
	admitted []*Request // admitted for it: back to the queue if it is dropped
}

// step schedules, runs and samples one forward pass; it reports whether
// anything ran.
func (s *Scheduler) step(ctx context.Context) bool {
	var batch []item
	var prep *runner.Prepared
	pinned := false // the batch was prepared ahead: it pins its requests
	var admitted []*Request
	if a := s.ahead; a != nil {
		s.ahead = nil
		batch, prep, pinned, admitted = a.batch, a.prep, true, a.admitted
		s.ranAhead++
		s.m.ahead.Add(context.Background(), 1)
		for _, it := range batch {
			if it.fill { // the token the step before drew (or, for a request that stopped there, its last)
				it.tokens[0] = it.req.tokens[len(it.req.tokens)-1]
			}
		}
	} else {
		batch = s.schedule()
	}
	for len(batch) > 0 {
		if prep == nil {
			var err error
			prep, err = s.prepare(ctx, batch)
			switch {
			case errors.Is(err, blocks.ErrPoolExhausted):
				batch = s.preempt(batch)
				if s.restarted { // preempting found kvd restarted: recompute everything
					return true
				}
				continue
			case errors.Is(err, ipc.ErrRestarted):
				s.restarted = true
				return true
			case err != nil:
				s.fail(batch, err)
				return true
			}
		}
		var ahead func()
		if s.cfg.AsyncScheduling {
			if s.r.CanRunAhead() {
				ahead = func() { s.prepareAhead(ctx, batch) }
			} else if !s.warnedAhead {
				s.warnedAhead = true
				msg := "async scheduling is off for this model: a layer evicts between steps, which the next step's reserve waits for"
				if s.cfg.AsyncDefault {
					s.log.Info(msg)
				} else {
					s.log.Warn(msg)
				}
			}
		}
		stepCtx := trace.ContextWithSpan(ctx, batch[0].req.span)
		logits, drawn, err := s.r.Run(stepCtx, prep, ahead)
		if err != nil {
			if errors.Is(err, runner.ErrStaleStep) {
				// Prepared ahead on a connection to kvd since remade: it did
				// not run. Schedule again (after a restart, handleRestart
				// recomputes everything).
				s.letGo(batch, admitted)
				return true
			}
			s.dropAhead()
			if pinned {
				s.unpin(batch)
			}
			s.fail(batch, err)
			return true
		}
		s.sample(batch, logits, drawn)
		if pinned {
			s.unpin(batch)
		}
		return true
	}
	return false
}

// prepareAhead schedules and reserves the step after cur while cur runs
// (Runner.Run calls it once cur's work is queued). If the step cannot be
// reserved now (the pool is full, kvd went away), nothing is prepared and
// the next step is scheduled after cur as usual.
func (s *Scheduler) prepareAhead(ctx context.Context, cur []item) {
	batch, admitted := s.scheduleAfter(cur)
	if len(batch) == 0 {
		s.unadmit(admitted)
		return
	}
	prep, err := s.prepare(ctx, batch)
	if err != nil {
		if errors.Is(err, ipc.ErrRestarted) {
			s.restarted = true
		}
		s.unadmit(admitted)
		return
	}
	for _, it := range batch {
		it.req.pins++
	}
	s.ahead = &aheadStep{batch: batch, prep: prep, admitted: admitted}
}

// dropAhead gives back a step prepared ahead that will not run: kvd rolls
// it back (the runner's state only, after a reconnect dropped it), and
// letGo releases its requests.
func (s *Scheduler) dropAhead() {
	a := s.ahead
	if a == nil {
		return
	}
	s.ahead = nil
	s.r.Cancel(a.prep)
	s.letGo(a.batch, a.admitted)
}

// letGo releases the requests of a step prepared ahead that did not run:
// those admitted for it go back to the queue, and those that finished
// meanwhile are closed, or after a restart (s.restarted: handleRestart
// requeues everything) forgotten, since the new kvd never had them.
func (s *Scheduler) letGo(batch []item, admitted []*Request) {
	if s.restarted {
		s.forgetPinned(batch)
		return
	}
	s.unpin(batch)
	s.unadmit(admitted)
}

// unadmit returns requests admitted for a step that did not run to the
// queue's front, their sequences closed.
func (s *Scheduler) unadmit(rs []*Request) {
	for i := len(rs) - 1; i >= 0; i-- {
		r := rs[i]
		if r.finished || !slices.Contains(s.running, r) {
			continue
		}
		s.running = slices.DeleteFunc(s.running, func(x *Request) bool { return x == r })
		s.requeue(r)
	}
}

// requeue closes a request's sequence and puts it back at the queue's
// front, to be computed again from its first token.
func (s *Scheduler) requeue(r *Request) {
	s.closeSeq(r)
	r.computed = 0
	s.waiting = append([]*Request{r}, s.waiting...)
	s.m.waiting.Add(1)
}

// forgetPinned ends the hold of a step prepared ahead on a kvd that has
// since restarted: its requests that finished meanwhile, whose close was
// put off for it, are forgotten (the new kvd never had them).
func (s *Scheduler) forgetPinned(batch []item) {
	for _, it := range batch {
		r := it.req
		r.pins, r.closeLater = 0, false
		if r.finished && r.open {
			s.r.Forget(r.id)
			r.open = false
		}
	}
}

// unpin ends the hold of a step prepared ahead on its requests' sequences
// (call it for such a step only, once): those that finished while it was
// prepared are closed now, unless a later step prepared ahead has them
// too.
func (s *Scheduler) unpin(batch []item) {
	for _, it := range batch {
		r := it.req
		if r.pins == 0 {
			continue
		}
		r.pins--
		if r.pins == 0 && r.closeLater {
			r.closeLater = false
			s.closeSeq(r)
		}
	}
}

// schedule picks this step's work: every running sequence decodes one
// token; prompts being prefilled in chunks take their next chunk; then
// waiting prompts are admitted in order while the token budget, the
// sequence limit and kvd's free blocks allow (keeping a block per layer
// for each running sequence's growth, and what the rest of each chunked
// prompt will take). With chunked prefill a prompt takes what is left of
// the budget and goes on next step; without (a sparse model, or a request
// that scores its prompt), a step's first prompt is admitted whole even
// past the budget, so that a long prompt does not wait for the running
// sequences to drain (they stall for its step instead).
func (s *Scheduler) schedule() []item {
	batch, _ := s.scheduleAfter(nil)
	return batch
}

// scheduleAfter is schedule for the step after cur, which has not run yet
// (nil: after the last step, which has): cur's requests count as having
// computed its tokens, and each of them that draws a token in cur decodes
// it next (fill: the token is written in once cur is over), unless cur's
// token ends it by length. One that stops on its token in cur is still
// scheduled: it cannot be known before. It returns the requests it
// admitted too.
func (s *Scheduler) scheduleAfter(cur []item) (batch []item, admitted []*Request) {
	prompts := 0
	budget := s.cfg.MaxBatchTokens
	canChunk := s.cfg.ChunkedPrefill && s.r.Chunkable()
	inCur := make(map[*Request]item, len(cur))
	for _, it := range cur {
		inCur[it.req] = it
	}
	type chunk struct {
		r        *Request
		computed int
	}
	var chunking []chunk
	for _, r := range s.running {
		computed, gen := r.computed, r.generated()
		if it, ok := inCur[r]; ok {
			computed += len(it.tokens)
			if !it.partial {
				// cur draws (or forces) r's next token: r decodes it next,
				// unless that token ends it.
				if r.Params.MaxTokens == 0 || gen+1 >= r.Params.MaxTokens || len(r.tokens)+1 >= s.cfg.MaxModelLen || r.Ctx.Err() != nil {
					continue
				}
				batch = append(batch, item{req: r, tokens: []int32{0}, gen: gen + 1, fill: true})
				budget--
				continue
			}
		}
		if len(r.tokens)-computed > 1 {
			chunking = append(chunking, chunk{r, computed})
			continue
		}
		if len(r.tokens) == computed {
			continue // nothing to compute (not after a step that ran)
		}
		batch = append(batch, item{req: r, tokens: r.tokens[computed:], gen: gen})
		budget--
	}
	free := s.r.FreeBlocks() - len(s.running)*s.r.Model().Config.NumLayers
	for _, c := range chunking {
		r := c.r
		n := len(r.tokens) - c.computed
		free -= s.r.BlocksNeeded(n)
		if budget <= 0 && prompts > 0 {
			continue
		}
		k := min(n, max(budget, 1)) // the first goes on even when the decodes took the budget
		batch = append(batch, item{req: r, tokens: r.tokens[c.computed : c.computed+k], prefill: true, partial: k < n, gen: r.generated()})
		prompts++
		budget -= k
	}
	for len(s.waiting) > 0 && len(s.running) < s.cfg.MaxNumSeqs {
		r := s.waiting[0]
		n := len(r.tokens) - r.computed
		need := s.r.BlocksNeeded(n)
		chunked := canChunk && !(r.Params.PromptLogprobs && !r.scored)
		if all := s.r.BlocksNeeded(len(r.tokens)); all > s.r.TotalBlocks() {
			// It could never fit: say so now rather than compute chunks
			// of it until the pool runs out.
			s.waiting = s.waiting[1:]
			s.m.waiting.Add(-1)
			s.finish(r, "", fmt.Errorf("%w (%d tokens need %d blocks, the pool has %d)", ErrTooLarge, len(r.tokens), all, s.r.TotalBlocks()))
			continue
		}
		if need > free && len(batch) > 0 {
			break
		}
		c := n
		if chunked {
			if budget <= 0 && prompts > 0 {
				break
			}
			c = min(n, max(budget, 1)) // the first prompt goes in even when the decodes took the budget
		} else if n > budget && prompts > 0 {
			break
		}
		s.waiting = s.waiting[1:]
		s.m.waiting.Add(-1)
		if err := s.admit(r); err != nil {
			if errors.Is(err, ipc.ErrRestarted) {
				// kvd came back empty: rebuild everything next time.
				s.waiting = append([]*Request{r}, s.waiting...)
				s.m.waiting.Add(1)
				s.restarted = true
				return nil, admitted
			}
			s.finish(r, "", err)
			continue
		}
		s.running = append(s.running, r)
		admitted = append(admitted, r)
		batch = append(batch, item{req: r, tokens: r.tokens[r.computed : r.computed+c], prefill: true, partial: c < n, gen: r.generated()})
		prompts++
		budget -= c
		free -= need
	}
	return batch, admitted
}

// admit opens the request's sequence in kvd.
func (s *Scheduler) admit(r *Request) error {
	if err := s.r.Open(r.Ctx, r.id); err != nil {
		return err
	}
	r.span.End() // queue
	_, r.span = tracer.Start(r.Ctx, "prefill", trace.WithAttributes(attribute.Int("tokens", len(r.tokens))))
	r.open = true
	if !r.counted {
		r.counted = true
		s.m.prompt.Add(r.Ctx, int64(len(r.Prompt)))
	}
	return nil
}

// prepare reserves a step's slots with kvd; kvd's calls join the oldest
// request's trace. Tokens are drawn where the logits are (the GPU); the
// logits come to the host only for a request that asks for
// log-probabilities.
func (s *Scheduler) prepare(ctx context.Context, batch []item) (*runner.Prepared, error) {
	work := make([]runner.Work, len(batch))
	for i, it := range batch {
		r := it.req
		if it.partial {
			work[i] = runner.Work{Seq: r.id, Tokens: it.tokens, NoLogits: true}
			continue
		}
		all := it.prefill && r.Params.PromptLogprobs && !r.scored
		w := runner.Work{Seq: r.id, Tokens: it.tokens, AllLogits: all, NoLogits: !all && r.Params.Logprobs < 0}
		if g := it.gen; g >= len(r.Params.Forced) {
			sp := r.Params.Sampling
			w.Draw = &kernels.SampleParams{Temperature: sp.Temperature, TopK: sp.TopK, TopP: sp.TopP, Seed: r.seed, Step: uint64(g)}
			if g < r.Params.MinTokens {
				w.Draw.Suppress = r.Params.StopTokens
			}
		}
		work[i] = w
	}
	return s.r.Prepare(trace.ContextWithSpan(ctx, batch[0].req.span), work)
}

// requestSeed is a request's sampling seed: its own, or a random one.
func requestSeed(seed *uint64) uint64 {
	if seed != nil {
		return *seed
	}
	var b [8]byte
	crand.Read(b[:]) // never fails since Go 1.24
	return binary.LittleEndian.Uint64(b[:])
}

// preempt makes room after kvd said the pool is full: the newest admitted
// request leaves the batch; its sequence is closed and it goes back to the
// queue's front, to be recomputed when blocks free up. A request alone in
// the batch waits too, unless it could never fit in the whole pool.
func (s *Scheduler) preempt(batch []item) []item {
	victim := s.running[len(s.running)-1]
	if len(batch) == 1 && s.r.BlocksNeeded(len(victim.tokens)) > s.r.TotalBlocks() {
		s.running = s.running[:len(s.running)-1]
		s.finish(victim, "", fmt.Errorf("%w (%d tokens)", ErrTooLarge, len(victim.tokens)))
		return nil
	}
	s.running = s.running[:len(s.running)-1]
	s.requeue(victim)
	s.m.preemptions.Add(context.Background(), 1)
	s.preempted++
	s.log.Debug("preempted", "request", victim.id, "tokens", len(victim.tokens))
	return slices.DeleteFunc(batch, func(it item) bool { return it.req == victim })
}

// closeSeq closes the request's sequence in kvd. If kvd restarted, every
// running request must be recomputed: the Run loop does that next.
func (s *Scheduler) closeSeq(r *Request) {
	if !r.open {
		return
	}
	if r.pins > 0 { // a step prepared ahead still has it: close it once that has run
		r.closeLater = true
		return
	}
	r.open = false
	switch err := s.r.Close(context.WithoutCancel(r.Ctx), r.id); {
	case errors.Is(err, ipc.ErrRestarted):
		s.restarted = true
	case errors.Is(err, blocks.ErrUnknownSeq):
		// kvd restarted (or reclaimed the lease) before this call found out.
		s.log.Debug("closing a sequence kvd does not have", "request", r.id, "err", err)
	case err != nil:
		s.log.Error("closing a sequence", "request", r.id, "err", err)
	}
}

// sample turns each item's drawn token (and, with logprobs, its logits)
// into its next token and events.
func (s *Scheduler) sample(batch []item, logits [][]float32, drawn []int32) {
	now := time.Now()
	v := s.r.Model().Config.VocabSize
	for i, it := range batch {
		r := it.req
		if r.finished {
			s.ghosts++
			continue // it stopped (or was cancelled) after this step was prepared: its output is dropped
		}
		r.computed += len(it.tokens)
		if it.partial {
			continue // the prompt goes on next step
		}
		lg := logits[i]
		if rows := len(lg) / v; r.Params.PromptLogprobs && !r.scored { // score the prompt once
			r.box.push(Event{PromptLogprobs: s.scorePrompt(r, lg, v)})
			r.scored = true
			lg = lg[(rows-1)*v:]
		}
		if r.Params.MaxTokens == 0 {
			s.finishRunning(r, FinishLength)
			continue
		}
		tok := s.next(r, lg, drawn, i)
		r.tokens = append(r.tokens, tok.ID)
		if r.first.IsZero() {
			r.first = now
			s.m.ttft.Record(r.Ctx, now.Sub(r.arrived).Seconds())
			r.span.End() // prefill
			_, r.span = tracer.Start(r.Ctx, "decode")
		} else {
			s.m.tpot.Record(r.Ctx, now.Sub(r.last).Seconds())
		}
		r.last = now
		s.m.generated.Add(r.Ctx, 1)
		r.box.push(Event{Token: &tok})
		switch {
		case !r.Params.IgnoreEOS && slices.Contains(r.Params.StopTokens, tok.ID):
			s.finishRunning(r, FinishStop)
		case r.generated() >= r.Params.MaxTokens || len(r.tokens) >= s.cfg.MaxModelLen:
			s.finishRunning(r, FinishLength)
		}
	}
}

// next is a request's next token: forced, or the one drawn for batch item
// i; with logprobs, scored under its logits lg (stop tokens suppressed while
// min_tokens holds, as they were for the draw).
func (s *Scheduler) next(r *Request, lg []float32, drawn []int32, i int) Token {
	var tok Token
	g := r.generated()
	if g < len(r.Params.Forced) {
		tok.ID = r.Params.Forced[g]
	} else {
		tok.ID = drawn[i]
	}
	if r.Params.Logprobs >= 0 {
		if g < r.Params.MinTokens && len(r.Params.StopTokens) > 0 {
			lg = slices.Clone(lg)
			sample.Suppress(lg, r.Params.StopTokens)
		}
		lp := make([]float32, len(lg))
		sample.LogSoftmax(lp, lg)
		tok.Logprob = lp[tok.ID]
		tok.Top = sample.TopN(lp, r.Params.Logprobs)
	}
	return tok
}

// scorePrompt gives each prompt token after the first its log-probability
// under the logits of the position before it (none for a one-token prompt).
func (s *Scheduler) scorePrompt(r *Request, lg []float32, v int) []Token {
	out := make([]Token, 0, len(r.Prompt)-1)
	lp := make([]float32, v)
	for i := 1; i < len(r.Prompt); i++ {
		sample.LogSoftmax(lp, lg[(i-1)*v:i*v])
		out = append(out, Token{ID: r.Prompt[i], Logprob: lp[r.Prompt[i]], Top: sample.TopN(lp, max(r.Params.Logprobs, 0))})
	}
	return out
}

func (s *Scheduler) finishRunning(r *Request, reason string) {
	s.running = slices.DeleteFunc(s.running, func(x *Request) bool { return x == r })
	s.finish(r, reason, nil)
}

// finish closes the request's sequence and sends its last event; a second
// call does nothing.
func (s *Scheduler) finish(r *Request, reason string, err error) {
	if r.finished {
		return
	}
	r.finished = true
	s.closeSeq(r)
	if err != nil {
		r.span.RecordError(err)
	}
	r.span.End()
	if !r.first.IsZero() {
		s.m.e2e.Record(r.Ctx, time.Since(r.arrived).Seconds())
	}
	r.box.push(Event{Finish: reason, Err: err})
	r.box.close()
}

// handleRestart recomputes every running request after kvd came back
// empty: their tokens are intact, their KV is not, so they go back to the
// queue's front as if preempted.
func (s *Scheduler) handleRestart() {
	if !s.restarted {
		return
	}
	s.dropAhead() // it belongs to the old kvd: nothing of it is sent to the new one
	s.restarted = false
	for _, r := range s.running {
		s.r.Forget(r.id)
		r.open, r.computed = false, 0
	}
	s.log.Warn("kvd restarted: recomputing running requests", "requests", len(s.running))
	s.waiting = append(s.running, s.waiting...)
	s.m.waiting.Add(int64(len(s.running)))
	s.running = nil
}

// fail ends every request of a batch that could not run (kvd unreachable,
// for one); the scheduler itself keeps going.
func (s *Scheduler) fail(batch []item, err error) {
	if errors.Is(err, ipc.ErrDisconnected) || errors.Is(err, ipc.ErrNotRunning) {
		// kvd is gone: every running request fails; their sequences are
		// closed in kvd whenever it is reached again.
		s.dropAhead()
		for _, r := range s.running {
			r.pins = 0
			s.r.Abandon(r.id)
			r.open = false
			s.finish(r, "", err)
		}
		s.running = nil
		return
	}
	s.log.Error("step failed", "err", err, "requests", len(batch))
	for _, it := range batch {
		s.running = slices.DeleteFunc(s.running, func(x *Request) bool { return x == it.req })
		s.finish(it.req, "", err)
	}
}

func (s *Scheduler) shutdown() {
	s.dropAhead()
	s.mu.Lock()
	s.stopped = true
	s.waiting = append(s.waiting, s.incoming...)
	s.incoming = nil
	s.mu.Unlock()
	for _, r := range append(s.running, s.waiting...) {
		s.finish(r, "", ErrStopped)
	}
	s.running, s.waiting = nil, nil
}
