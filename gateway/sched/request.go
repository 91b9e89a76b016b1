// Package sched is the gateway's continuous-batching scheduler. One
// goroutine owns the runner: every step it drops cancelled requests, lets
// running sequences decode, admits waiting prompts under a token budget,
// preempts by recompute (newest first) when kvd's pool runs out, runs one
// forward pass with one round trip to kvd, and samples. With
// AsyncScheduling the next step is scheduled, and its round trip made,
// while the forward pass runs on the device.
//
// sched must not import the HTTP layer or the tokenizer: it works in token
// ids and hands tokens to the API layer on each request's channel.
package sched

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kvd-project/kvd/gateway/sample"
)

// Errors the API layer turns into HTTP statuses.
var (
	ErrQueueFull = errors.New("request queue is full")
	ErrTooLarge  = errors.New("request needs more KV cache than the pool holds")
	ErrStopped   = errors.New("scheduler stopped")
)

// Params are one request's generation settings, validated by the API layer.
type Params struct {
	MaxTokens  int     // new tokens at most; 0 with PromptLogprobs scores the prompt only
	MinTokens  int     // stop tokens are suppressed before this many
	IgnoreEOS  bool    // keep going after a stop token
	StopTokens []int32 // end-of-sequence ids
	Sampling   sample.Params
	// Logprobs is how many alternatives to return with each token's
	// log-probability; -1 returns none.
	Logprobs int
	// PromptLogprobs also scores the prompt (echo + logprobs).
	PromptLogprobs bool
	// Forced, when set, replaces sampling: the i-th new token is Forced[i],
	// and its log-probability under the (possibly compressed) cache is
	// reported. It is how a continuation is scored through decode.
	Forced []int32
}

// Token is one generated (or, with PromptLogprobs, prompt) token.
type Token struct {
	ID      int32
	Logprob float32
	Top     []sample.TokenLogprob
}

// Finish reasons, as OpenAI names them.
const (
	FinishStop   = "stop"
	FinishLength = "length"
	FinishAbort  = "abort"
)

// Event is what a request's channel carries: prompt log-probabilities once
// (if asked), then a token per step, then a final event with Finish or Err.
type Event struct {
	PromptLogprobs []Token // for prompt tokens 1.. (the first has none)
	Token          *Token
	Finish         string
	Err            error
}

// Request is one sequence to generate. The caller fills Prompt, Params and
// Ctx and reads Events until it is closed; cancelling Ctx aborts the request
// and frees its KV blocks at the next step.
type Request struct {
	Prompt []int32
	Params Params
	Ctx    context.Context

	box      mailbox
	id       uint64
	tokens   []int32 // prompt, then generated tokens
	computed int     // tokens whose K/V are in kvd
	open     bool    // has a sequence in kvd
	seed     uint64  // the draws' seed: Params.Sampling.Seed or random
	scored   bool    // prompt log-probs sent
	arrived  time.Time
	first    time.Time // first token
	last     time.Time // latest token
	span     trace.Span
	counted  bool // prompt tokens counted in the metrics
	finished bool // the last event was sent
	// pins counts the steps prepared ahead (AsyncScheduling) that have
	// the sequence and have not run; closeLater: it finished meanwhile,
	// and is closed once none has.
	pins       int
	closeLater bool
}

// Next waits for the request's next event; ok is false once the events
// are over (after the event with Finish or Err).
func (r *Request) Next() (ev Event, ok bool) { return r.box.next() }

// mailbox is an unbounded event queue: the scheduler never blocks on a slow
// reader, and a request reserves no memory for tokens it may never make.
type mailbox struct {
	mu     sync.Mutex
	queue  []Event
	closed bool
	notify chan struct{} // holds a token while events are queued or the box is closed
}

func (b *mailbox) init() { b.notify = make(chan struct{}, 1) }

func (b *mailbox) signal() {
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

func (b *mailbox) push(ev Event) {
	b.mu.Lock()
	b.queue = append(b.queue, ev)
	b.mu.Unlock()
	b.signal()
}

func (b *mailbox) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.signal()
}

func (b *mailbox) next() (Event, bool) {
	for {
		b.mu.Lock()
		if len(b.queue) > 0 {
			ev := b.queue[0]
			b.queue = b.queue[1:]
			more := len(b.queue) > 0 || b.closed
			b.mu.Unlock()
			if more {
				b.signal()
			}
			return ev, true
		}
		if b.closed {
			b.mu.Unlock()
			b.signal()
			return Event{}, false
		}
		b.mu.Unlock()
		<-b.notify
	}
}

// Generated is the number of tokens produced so far.
func (r *Request) generated() int { return len(r.tokens) - len(r.Prompt) }
