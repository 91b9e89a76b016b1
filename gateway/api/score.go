package api

import (
	"encoding/json"
	"math"

	"github.com/valyala/fasthttp"

	"github.com/kvd-project/kvd/gateway/sched"
)

// scoreRequest is POST /v1/kvd/score, kvd's own extension (not OpenAI's):
// the prompt is prefilled, compressed by each layer's policy as any prompt
// is, and then the continuation is fed one token per step through decode,
// so every continuation token is scored against the cache the policies
// left, as it would be while generating. Summed, the log-probabilities are
// the continuation's log-likelihood: compare them across --kv-policy
// settings to see what compression costs on your own data.
type scoreRequest struct {
	Model        string          `json:"model"`
	Prompt       json.RawMessage `json:"prompt"`       // a string or token ids
	Continuation json.RawMessage `json:"continuation"` // a string (no BOS added) or token ids
	TopLogprobs  int             `json:"top_logprobs"` // alternatives per continuation token
}

type scoredToken struct {
	Token   int32             `json:"token"`
	Text    string            `json:"text"`
	Logprob float32           `json:"logprob"`
	Top     []json.RawMessage `json:"top_logprobs,omitempty"`
}

func (s *Server) score(ctx *fasthttp.RequestCtx) *apiError {
	var req scoreRequest
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	if e := s.checkModel(req.Model); e != nil {
		return e
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > maxLogprobs {
		return badParam("top_logprobs", "top_logprobs must be between 0 and %d", maxLogprobs)
	}
	prompts, e := s.prompts(req.Prompt)
	if e != nil {
		return e
	}
	if len(prompts) != 1 {
		return badParam("prompt", "score takes one prompt")
	}
	cont, e := s.continuation(req.Continuation)
	if e != nil {
		return e
	}
	prompt := prompts[0]
	if len(prompt)+len(cont) > s.cfg.MaxModelLen {
		return withCode(badParam("continuation", "prompt (%d tokens) and continuation (%d) exceed the context of %d",
			len(prompt), len(cont), s.cfg.MaxModelLen), "context_length_exceeded")
	}
	rctx, cancel, span := s.requestContext(ctx, "POST /v1/kvd/score")
	defer span.End()
	defer cancel()
	p := sched.Params{MaxTokens: len(cont), IgnoreEOS: true, Logprobs: req.TopLogprobs, Forced: cont}
	g, e := s.start(rctx, 0, prompt, p, nil)
	if e != nil {
		return e
	}
	gens := []*generation{g}
	runAll(gens, func(update) error { return nil })
	if e := genError(gens); e != nil {
		return e
	}
	out := make([]scoredToken, len(g.tokens))
	var sum float64
	for i, t := range g.tokens {
		out[i] = scoredToken{Token: t.ID, Text: s.tokenText(t.ID), Logprob: t.Logprob}
		for _, a := range t.Top {
			b, _ := json.Marshal(map[string]any{"token": a.Token, "logprob": a.Logprob})
			out[i].Top = append(out[i].Top, b)
		}
		sum += float64(t.Logprob)
	}
	n := max(1, len(out))
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"object": "kvd.score", "model": s.cfg.ModelName,
		"prompt_tokens": len(prompt), "continuation_tokens": len(out),
		"tokens": out, "sum_logprob": sum, "mean_logprob": sum / float64(n),
		"perplexity": math.Exp(-sum / float64(n)),
	})
	return nil
}

// continuation reads a continuation: text (tokenized without BOS) or ids.
func (s *Server) continuation(raw json.RawMessage) ([]int32, *apiError) {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		ids, err := s.cfg.Tokenizer.Encode(text, false)
		if err != nil || len(ids) == 0 {
			return nil, badParam("continuation", "the continuation is empty or cannot be tokenized")
		}
		out := make([]int32, len(ids))
		for i, id := range ids {
			out[i] = int32(id)
		}
		return out, nil
	}
	var ids []int32
	if err := json.Unmarshal(raw, &ids); err != nil || len(ids) == 0 {
		return nil, badParam("continuation", "continuation must be a non-empty string or list of token ids")
	}
	return ids, s.checkIDs(ids)
}
