package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvd-project/kvd/gateway/sample"
	"github.com/kvd-project/kvd/gateway/sched"
)

// samplingFields are the generation parameters both endpoints share.
type samplingFields struct {
	MaxTokens     *int            `json:"max_tokens"`
	Temperature   *float64        `json:"temperature"`
	TopP          *float64        `json:"top_p"`
	TopK          *int            `json:"top_k"`
	Seed          *int64          `json:"seed"`
	Stop          json.RawMessage `json:"stop"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	N                 *int               `json:"n"`
	IgnoreEOS         bool               `json:"ignore_eos"`
	MinTokens         int                `json:"min_tokens"`
	PresencePenalty   *float64           `json:"presence_penalty"`
	FrequencyPenalty  *float64           `json:"frequency_penalty"`
	RepetitionPenalty *float64           `json:"repetition_penalty"`
	LogitBias         map[string]float64 `json:"logit_bias"`
	BestOf            *int               `json:"best_of"`
	// ReturnTokensAsTokenIDs names tokens in logprobs "token_id:N", as
	// vLLM's flag of the same name does, for clients that need exact ids.
	ReturnTokensAsTokenIDs bool `json:"return_tokens_as_token_ids"`
}

// maxStops is OpenAI's limit on stop strings.
const maxStops = 4

// params validates the shared fields. defaultMax is the endpoint's default
// max_tokens when the client gives none (-1: the rest of the context).
func (s *Server) params(f *samplingFields, promptLen, defaultMax int) (sched.Params, []string, *apiError) {
	p := sched.Params{Logprobs: -1, IgnoreEOS: f.IgnoreEOS, MinTokens: f.MinTokens}
	if f.N != nil && *f.N != 1 {
		return p, nil, badParam("n", "n must be 1 (got %d): this server returns one choice per prompt", *f.N)
	}
	if f.BestOf != nil && *f.BestOf != 1 {
		return p, nil, badParam("best_of", "best_of must be 1")
	}
	for name, v := range map[string]*float64{"presence_penalty": f.PresencePenalty, "frequency_penalty": f.FrequencyPenalty} {
		if v != nil && *v != 0 {
			return p, nil, badParam(name, "%s is not supported yet; leave it out or set it to 0", name)
		}
	}
	if f.RepetitionPenalty != nil && *f.RepetitionPenalty != 1 {
		return p, nil, badParam("repetition_penalty", "repetition_penalty is not supported yet; leave it out or set it to 1")
	}
	if len(f.LogitBias) > 0 {
		return p, nil, badParam("logit_bias", "logit_bias is not supported yet")
	}
	room := s.cfg.MaxModelLen - promptLen
	switch {
	case f.MaxTokens == nil && defaultMax < 0:
		p.MaxTokens = room
	case f.MaxTokens == nil:
		p.MaxTokens = min(defaultMax, room)
	case *f.MaxTokens < 0:
		return p, nil, badParam("max_tokens", "max_tokens must be at least 0, got %d", *f.MaxTokens)
	default:
		p.MaxTokens = *f.MaxTokens
	}
	if promptLen+p.MaxTokens > s.cfg.MaxModelLen || room < 1 {
		return p, nil, withCode(badParam("max_tokens", "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the prompt, %d in the completion). Please reduce the length of the prompt or the completion.",
			s.cfg.MaxModelLen, promptLen+p.MaxTokens, promptLen, p.MaxTokens), "context_length_exceeded")
	}
	if f.MinTokens < 0 || f.MinTokens > p.MaxTokens {
		return p, nil, badParam("min_tokens", "min_tokens must be between 0 and max_tokens (%d), got %d", p.MaxTokens, f.MinTokens)
	}
	if f.Temperature != nil {
		t := *f.Temperature
		if t < 0 || t > 2 || math.IsNaN(t) {
			return p, nil, badParam("temperature", "temperature must be between 0 and 2, got %g", t)
		}
		p.Sampling.Temperature = float32(t)
	} else {
		p.Sampling.Temperature = 1
	}
	if f.TopP != nil {
		if *f.TopP <= 0 || *f.TopP > 1 {
			return p, nil, badParam("top_p", "top_p must be in (0, 1], got %g", *f.TopP)
		}
		p.Sampling.TopP = float32(*f.TopP)
	}
	if f.TopK != nil {
		if *f.TopK < -1 || *f.TopK == 0 {
			return p, nil, badParam("top_k", "top_k must be -1 (off) or at least 1, got %d", *f.TopK)
		}
		p.Sampling.TopK = *f.TopK
	}
	if f.Seed != nil {
		seed := uint64(*f.Seed)
		p.Sampling.Seed = &seed
	}
	if !f.IgnoreEOS {
		for _, id := range s.cfg.Tokenizer.EOS() {
			p.StopTokens = append(p.StopTokens, int32(id))
		}
	}
	stops, e := parseStop(f.Stop)
	if e == nil && len(stops) > 0 && !s.cfg.Tokenizer.HasVocab() {
		return p, nil, badParam("stop", "stop strings need the tokenizer, which this server runs without (--skip-tokenizer-init)")
	}
	return p, stops, e
}

func parseStop(raw json.RawMessage) ([]string, *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, badParam("stop", "stop must be a string or a list of strings")
	}
	if len(many) > maxStops {
		return nil, badParam("stop", "at most %d stop strings, got %d", maxStops, len(many))
	}
	return many, nil
}

// generation follows one choice: its scheduler request, the incremental
// detokenizer and the stop-string filter.
type generation struct {
	s      *Server
	index  int
	ctx    context.Context
	cancel context.CancelFunc
	req    *sched.Request
	stop   *sample.StopFilter
	dec    interface {
		Add(int) string
		Flush() string
	}

	detok    trace.Span      // from the first token to the end
	text     strings.Builder // completion text emitted so far
	tokens   []sched.Token
	promptLP []sched.Token
	finish   string
	err      error
	done     bool
}

// update is what one scheduler event changed for a choice.
type update struct {
	index    int
	text     string
	tokens   []sched.Token
	promptLP []sched.Token
	finish   string // set on the last update
	err      error
}

func (s *Server) start(parent context.Context, index int, prompt []int32, p sched.Params, stops []string) (*generation, *apiError) {
	ctx, cancel := context.WithCancel(parent)
	g := &generation{s: s, index: index, ctx: ctx, cancel: cancel, stop: sample.NewStopFilter(stops), dec: s.cfg.Tokenizer.NewStreamDecoder(true)}
	g.req = &sched.Request{Prompt: prompt, Params: p, Ctx: ctx}
	if err := s.cfg.Scheduler.Submit(g.req); err != nil {
		cancel()
		return nil, schedError(err)
	}
	return g, nil
}

// schedError maps scheduler errors to HTTP errors.
func schedError(err error) *apiError {
	switch {
	case errors.Is(err, sched.ErrQueueFull):
		return &apiError{status: fasthttp.StatusServiceUnavailable, Type: "server_error", Message: "the request queue is full; retry later", retryAfter: 1}
	case errors.Is(err, sched.ErrTooLarge):
		return withCode(badRequest("%v", err), "context_length_exceeded")
	}
	return &apiError{status: fasthttp.StatusServiceUnavailable, Type: "server_error", Message: err.Error(), retryAfter: 1}
}

// next waits for the choice's next event.
func (g *generation) next() update {
	ev, ok := g.req.Next()
	u := update{index: g.index}
	if !ok {
		ev = sched.Event{Finish: sched.FinishAbort}
	}
	if ev.PromptLogprobs != nil {
		g.promptLP = ev.PromptLogprobs
		u.promptLP = ev.PromptLogprobs
		return u
	}
	if ev.Token != nil {
		if g.detok == nil {
			_, g.detok = tracer.Start(g.ctx, "detokenize")
		}
		g.tokens = append(g.tokens, *ev.Token)
		u.tokens = []sched.Token{*ev.Token}
		text, stopped := g.stop.Add(g.dec.Add(int(ev.Token.ID)))
		u.text = text
		if stopped {
			g.end(sched.FinishStop, nil)
			u.finish = sched.FinishStop
		}
		g.text.WriteString(u.text)
		return u
	}
	// The last event: flush what the decoder and the filter held back.
	text, stopped := g.stop.Add(g.dec.Flush())
	if !stopped {
		text += g.stop.Flush()
		stopped = g.stop.Stopped() // Flush may cut at a stop it had to wait on
	}
	u.text = text
	g.text.WriteString(text)
	reason := ev.Finish
	if stopped {
		reason = sched.FinishStop
	}
	g.end(reason, ev.Err)
	u.finish, u.err = g.finish, g.err
	return u
}

// end stops the choice.
func (g *generation) end(reason string, err error) {
	g.finish, g.err, g.done = reason, err, true
	if g.detok != nil {
		g.detok.End()
	}
	if g.finish == sched.FinishAbort && err == nil {
		g.err = context.Canceled
	}
	g.cancel() // a stop string ends it before the scheduler does: free its blocks
}

// runAll drives every choice to its end, calling emit for each update in
// the order they arrive (emit is called from one goroutine at a time).
func runAll(gens []*generation, emit func(update) error) error {
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for _, g := range gens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !g.done {
				u := g.next()
				mu.Lock()
				err := first
				if err == nil {
					err = emit(u)
					if err != nil {
						first = err
					}
				}
				mu.Unlock()
				if err != nil {
					for _, o := range gens {
						o.cancel()
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func cancelAll(gens []*generation) {
	for _, g := range gens {
		g.cancel()
	}
}

// usage counts tokens as OpenAI does.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func totalUsage(gens []*generation) usage {
	var u usage
	for _, g := range gens {
		u.PromptTokens += len(g.req.Prompt)
		u.CompletionTokens += len(g.tokens)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// genError is the HTTP error for a choice that failed mid-way.
func genError(gens []*generation) *apiError {
	for _, g := range gens {
		if g.err != nil && !errors.Is(g.err, context.Canceled) {
			return schedError(g.err)
		}
	}
	return nil
}

// sse writes server-sent events.
type sse struct{ w *bufio.Writer }

func (s sse) event(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.w.WriteString("data: ")
	s.w.Write(b)
	s.w.WriteString("\n\n")
	return s.w.Flush()
}

func (s sse) done() error {
	s.w.WriteString("data: [DONE]\n\n")
	return s.w.Flush()
}

// streamResponse answers with server-sent events: what write sends, then
// the usage chunk if the client asked for it, then [DONE]. end runs when
// the stream is over, whether it finished or the client left.
func (s *Server) streamResponse(ctx *fasthttp.RequestCtx, object, id string, f *samplingFields, gens []*generation, end func(), write func(sse) error) {
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	includeUsage := f.StreamOptions != nil && f.StreamOptions.IncludeUsage
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer end()
		out := sse{w}
		if write(out) != nil {
			return // the client left; every choice was cancelled
		}
		if includeUsage {
			usage := map[string]any{"id": id, "object": object, "created": s.created, "model": s.cfg.ModelName, "choices": []any{}, "usage": totalUsage(gens)}
			if out.event(usage) != nil {
				return
			}
		}
		out.done()
	})
}

// tokenText is a token's own decoded text.
func (s *Server) tokenText(id int32) string {
	return s.cfg.Tokenizer.Decode([]int{int(id)}, false)
}

// textWidth is how many characters a token adds to the returned text,
// where special tokens are skipped: what text_offset counts.
func (s *Server) textWidth(id int32) int {
	return utf8.RuneCountInString(s.cfg.Tokenizer.Decode([]int{int(id)}, true))
}

// tokenName is how a token appears in logprobs: its text, or "token_id:N".
func (s *Server) tokenName(id int32, asIDs bool) string {
	if asIDs {
		return "token_id:" + strconv.Itoa(int(id))
	}
	return s.tokenText(id)
}

func finishPtr(u update) *string {
	if u.finish == "" {
		return nil
	}
	f := u.finish
	if f == sched.FinishAbort {
		f = "abort"
	}
	return &f
}

func streamErrorEvent(err error) map[string]any {
	e := schedError(err)
	return map[string]any{"error": e}
}
