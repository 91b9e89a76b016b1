package api

import (
	"encoding/json"

	"github.com/valyala/fasthttp"

	"github.com/kvd-project/kvd/gateway/sched"
)

type completionRequest struct {
	samplingFields
	Model    string          `json:"model"`
	Prompt   json.RawMessage `json:"prompt"`
	Echo     bool            `json:"echo"`
	Logprobs *int            `json:"logprobs"`
	Suffix   *string         `json:"suffix"`
}

// maxLogprobs bounds top-k alternatives per token, as vLLM's default does.
const maxLogprobs = 20

// prompts turns "prompt" into token lists: a string, a list of strings, a
// list of token ids, or a list of token-id lists.
func (s *Server) prompts(raw json.RawMessage) ([][]int32, *apiError) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, badParam("prompt", "prompt is required")
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		ids, err := s.encode(one)
		return [][]int32{ids}, err
	}
	var ids []int32
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		return [][]int32{ids}, s.checkIDs(ids)
	}
	var texts []string
	if json.Unmarshal(raw, &texts) == nil && len(texts) > 0 {
		out := make([][]int32, len(texts))
		for i, t := range texts {
			var e *apiError
			if out[i], e = s.encode(t); e != nil {
				return nil, e
			}
		}
		return out, nil
	}
	var lists [][]int32
	if json.Unmarshal(raw, &lists) == nil && len(lists) > 0 {
		for _, l := range lists {
			if len(l) == 0 {
				return nil, badParam("prompt", "a token-id prompt is empty")
			}
			if e := s.checkIDs(l); e != nil {
				return nil, e
			}
		}
		return lists, nil
	}
	return nil, badParam("prompt", "prompt must be a non-empty string, list of strings, list of token ids, or list of token-id lists")
}

func (s *Server) encode(text string) ([]int32, *apiError) {
	ids, err := s.cfg.Tokenizer.Encode(text, true)
	if err != nil {
		return nil, badParam("prompt", "cannot tokenize the prompt: %v", err)
	}
	if len(ids) == 0 {
		return nil, badParam("prompt", "the prompt is empty")
	}
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out, nil
}

func (s *Server) checkIDs(ids []int32) *apiError {
	for _, id := range ids {
		if id < 0 || int(id) >= s.cfg.VocabSize {
			return badParam("prompt", "token id %d is outside the vocabulary (size %d)", id, s.cfg.VocabSize)
		}
	}
	return nil
}

// completionLogprobs is the legacy completions logprobs object.
type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float32           `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// add appends tokens; offset is where the first one's text starts.
func (s *Server) addLogprobs(lp *completionLogprobs, toks []sched.Token, offset int, first, asIDs bool) int {
	for i, t := range toks {
		lp.Tokens = append(lp.Tokens, s.tokenName(t.ID, asIDs))
		lp.TextOffset = append(lp.TextOffset, offset)
		offset += s.textWidth(t.ID)
		if first && i == 0 {
			lp.TokenLogprobs = append(lp.TokenLogprobs, nil)
			lp.TopLogprobs = append(lp.TopLogprobs, nil)
			continue
		}
		v := t.Logprob
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
		top := map[string]float32{}
		for _, a := range t.Top {
			top[s.tokenName(a.Token, asIDs)] = a.Logprob
		}
		lp.TopLogprobs = append(lp.TopLogprobs, top)
	}
	return offset
}

// promptTokens are the echoed prompt's tokens for logprobs: the first has
// no log-probability, the rest come from the scheduler.
func promptTokens(prompt []int32, scored []sched.Token) []sched.Token {
	out := append([]sched.Token{{ID: prompt[0]}}, scored...)
	return out
}

type completionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *completionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

func (s *Server) completions(ctx *fasthttp.RequestCtx) *apiError {
	var req completionRequest
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	if e := s.checkModel(req.Model); e != nil {
		return e
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return badParam("suffix", "suffix is not supported")
	}
	rctx, cancel, span := s.requestContext(ctx, "POST /v1/completions")
	_, tspan := tracer.Start(rctx, "tokenize")
	prompts, e := s.prompts(req.Prompt)
	tspan.End()
	if e != nil {
		cancel()
		span.End()
		return e
	}
	if req.Logprobs != nil && (*req.Logprobs < 0 || *req.Logprobs > maxLogprobs) {
		cancel()
		span.End()
		return badParam("logprobs", "logprobs must be between 0 and %d", maxLogprobs)
	}
	gens := make([]*generation, 0, len(prompts))
	fail := func(e *apiError) *apiError {
		cancelAll(gens)
		cancel()
		span.End()
		return e
	}
	for i, prompt := range prompts {
		p, stops, e := s.params(&req.samplingFields, len(prompt), 16)
		if e != nil {
			return fail(e)
		}
		if p.MaxTokens == 0 && !req.Echo {
			return fail(badParam("max_tokens", "max_tokens 0 only makes sense with echo"))
		}
		if req.Logprobs != nil {
			p.Logprobs = *req.Logprobs
			p.PromptLogprobs = req.Echo
		}
		g, e := s.start(rctx, i, prompt, p, stops)
		if e != nil {
			return fail(e)
		}
		gens = append(gens, g)
	}
	id := randomID("cmpl-")
	if req.Stream {
		s.streamResponse(ctx, "text_completion", id, &req.samplingFields, gens, func() { cancel(); span.End() },
			func(out sse) error { return s.streamCompletions(out, id, req, gens) })
		return nil
	}
	defer span.End()
	defer cancel()
	choices := make([]completionChoice, len(gens))
	runAll(gens, func(update) error { return nil })
	if e := genError(gens); e != nil {
		return e
	}
	for i, g := range gens {
		c := completionChoice{Index: i, Text: g.text.String(), FinishReason: finishPtr(update{finish: g.finish})}
		var prefix string
		if req.Echo {
			prefix = s.cfg.Tokenizer.Decode(toInts(g.req.Prompt), true)
			c.Text = prefix + c.Text
		}
		if req.Logprobs != nil {
			c.Logprobs = &completionLogprobs{}
			off := 0
			if req.Echo {
				off = s.addLogprobs(c.Logprobs, promptTokens(g.req.Prompt, g.promptLP), 0, true, req.ReturnTokensAsTokenIDs)
			}
			s.addLogprobs(c.Logprobs, g.tokens, off, false, req.ReturnTokensAsTokenIDs)
		}
		choices[i] = c
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"id": id, "object": "text_completion", "created": s.created, "model": s.cfg.ModelName,
		"choices": choices, "usage": totalUsage(gens),
	})
	return nil
}

// streamCompletions writes the choices' chunks; an error means the client
// left.
func (s *Server) streamCompletions(out sse, id string, req completionRequest, gens []*generation) error {
	chunk := func(c completionChoice) map[string]any {
		return map[string]any{"id": id, "object": "text_completion", "created": s.created, "model": s.cfg.ModelName, "choices": []completionChoice{c}}
	}
	offsets := make([]int, len(gens))
	if req.Echo && req.Logprobs == nil {
		// Without logprobs the echo goes first; with them, it goes with
		// the prompt's log-probabilities when the prompt has run.
		for i, g := range gens {
			c := completionChoice{Index: i, Text: s.cfg.Tokenizer.Decode(toInts(g.req.Prompt), true)}
			if err := out.event(chunk(c)); err != nil {
				cancelAll(gens)
				return err
			}
		}
	}
	return runAll(gens, func(u update) error {
		if u.err != nil && u.finish == "" {
			return out.event(streamErrorEvent(u.err))
		}
		c := completionChoice{Index: u.index, Text: u.text, FinishReason: finishPtr(u)}
		if req.Logprobs != nil {
			c.Logprobs = &completionLogprobs{}
			if u.promptLP != nil {
				if req.Echo {
					c.Text = s.cfg.Tokenizer.Decode(toInts(gens[u.index].req.Prompt), true)
				}
				offsets[u.index] = s.addLogprobs(c.Logprobs, promptTokens(gens[u.index].req.Prompt, u.promptLP), 0, true, req.ReturnTokensAsTokenIDs)
			} else {
				offsets[u.index] = s.addLogprobs(c.Logprobs, u.tokens, offsets[u.index], false, req.ReturnTokensAsTokenIDs)
			}
			if len(c.Logprobs.Tokens) == 0 {
				c.Logprobs = nil // a finish-only chunk carries no logprobs
			}
		}
		// Text held back by the detokenizer or a possible stop string
		// waits; without a tokenizer there is no text, and each token
		// still gets its (empty) chunk, as vLLM's --skip-tokenizer-init
		// streams, so that clients see tokens as they come.
		if c.Text == "" && c.FinishReason == nil && c.Logprobs == nil && (s.cfg.Tokenizer.HasVocab() || len(u.tokens) == 0) {
			return nil
		}
		return out.event(chunk(c))
	})
}

func toInts(ids []int32) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}
