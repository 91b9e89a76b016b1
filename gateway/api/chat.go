package api

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/kvd-project/kvd/gateway/sched"
	"github.com/kvd-project/kvd/gateway/tokenizer"
)

type chatRequest struct {
	samplingFields
	Model               string        `json:"model"`
	Messages            []chatMessage `json:"messages"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
	Logprobs            bool          `json:"logprobs"`
	TopLogprobs         *int          `json:"top_logprobs"`
	Tools               []any         `json:"tools"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// text is a message's content: a string, or a list of parts of which only
// text parts are supported.
func (m chatMessage) text(i int) (string, *apiError) {
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return "", badParam("messages", "messages[%d].content must be a string or a list of content parts", i)
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", badParam("messages", "messages[%d]: content parts of type %q are not supported (text only)", i, p.Type)
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

type chatLogprob struct {
	Token       string        `json:"token"`
	Logprob     float32       `json:"logprob"`
	Bytes       []int         `json:"bytes"`
	TopLogprobs []chatLogprob `json:"top_logprobs"`
}

func (s *Server) chatLogprobs(toks []sched.Token, asIDs bool) []chatLogprob {
	out := make([]chatLogprob, len(toks))
	for i, t := range toks {
		out[i] = s.chatLogprob(t.ID, t.Logprob, asIDs)
		out[i].TopLogprobs = make([]chatLogprob, len(t.Top))
		for j, a := range t.Top {
			out[i].TopLogprobs[j] = s.chatLogprob(a.Token, a.Logprob, asIDs)
			out[i].TopLogprobs[j].TopLogprobs = nil
		}
	}
	return out
}

func (s *Server) chatLogprob(id int32, lp float32, asIDs bool) chatLogprob {
	text := s.tokenText(id)
	b := make([]int, len(text))
	for i := range len(text) {
		b[i] = int(text[i])
	}
	return chatLogprob{Token: s.tokenName(id, asIDs), Logprob: lp, Bytes: b}
}

func (s *Server) chat(ctx *fasthttp.RequestCtx) *apiError {
	var req chatRequest
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	if e := s.checkModel(req.Model); e != nil {
		return e
	}
	if len(req.Messages) == 0 {
		return badParam("messages", "messages must be a non-empty list")
	}
	if len(req.Tools) > 0 {
		return badParam("tools", "tools are not supported yet")
	}
	msgs := make([]tokenizer.Message, len(req.Messages))
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user", "assistant", "developer":
		default:
			return badParam("messages", "messages[%d].role %q is not one of system, user, assistant", i, m.Role)
		}
		text, e := m.text(i)
		if e != nil {
			return e
		}
		msgs[i] = tokenizer.Message{Role: m.Role, Content: text}
	}
	if req.MaxCompletionTokens != nil && req.MaxTokens == nil {
		req.MaxTokens = req.MaxCompletionTokens
	}
	if req.TopLogprobs != nil && (*req.TopLogprobs < 0 || *req.TopLogprobs > maxLogprobs || !req.Logprobs) {
		return badParam("top_logprobs", "top_logprobs must be between 0 and %d, with logprobs true", maxLogprobs)
	}
	rctx, cancel, span := s.requestContext(ctx, "POST /v1/chat/completions")
	_, tspan := tracer.Start(rctx, "tokenize")
	rendered, err := s.cfg.Tokenizer.ApplyChatTemplate(msgs, true)
	var prompt []int32
	var e *apiError
	if err == nil {
		ids, encErr := s.cfg.Tokenizer.Encode(rendered, false)
		err = encErr
		prompt = make([]int32, len(ids))
		for i, id := range ids {
			prompt[i] = int32(id)
		}
	}
	tspan.End()
	if err != nil {
		cancel()
		span.End()
		if errors.Is(err, tokenizer.ErrNoTokenizer) {
			return badRequest("this server runs without a tokenizer (--skip-tokenizer-init): use /v1/completions with token-id prompts")
		}
		if errors.Is(err, tokenizer.ErrNoChatTemplate) {
			return badRequest("this model has no chat template; use /v1/completions")
		}
		return badParam("messages", "cannot render the chat template: %v", err)
	}
	p, stops, e := s.params(&req.samplingFields, len(prompt), -1)
	if e != nil {
		cancel()
		span.End()
		return e
	}
	if p.MaxTokens == 0 {
		cancel()
		span.End()
		return badParam("max_tokens", "max_tokens must be at least 1")
	}
	if req.Logprobs {
		p.Logprobs = 0
		if req.TopLogprobs != nil {
			p.Logprobs = *req.TopLogprobs
		}
	}
	g, e := s.start(rctx, 0, prompt, p, stops)
	if e != nil {
		cancel()
		span.End()
		return e
	}
	id := randomID("chatcmpl-")
	gens := []*generation{g}
	if req.Stream {
		s.streamResponse(ctx, "chat.completion.chunk", id, &req.samplingFields, gens, func() { cancel(); span.End() },
			func(out sse) error { return s.streamChat(out, id, req, gens) })
		return nil
	}
	defer span.End()
	defer cancel()
	runAll(gens, func(update) error { return nil })
	if e := genError(gens); e != nil {
		return e
	}
	choice := map[string]any{
		"index":         0,
		"message":       map[string]any{"role": "assistant", "content": g.text.String()},
		"logprobs":      nil,
		"finish_reason": finishPtr(update{finish: g.finish}),
	}
	if req.Logprobs {
		choice["logprobs"] = map[string]any{"content": s.chatLogprobs(g.tokens, req.ReturnTokensAsTokenIDs)}
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"id": id, "object": "chat.completion", "created": s.created, "model": s.cfg.ModelName,
		"choices": []any{choice}, "usage": totalUsage(gens),
	})
	return nil
}

// streamChat writes the chat chunks; an error means the client left.
func (s *Server) streamChat(out sse, id string, req chatRequest, gens []*generation) error {
	chunk := func(delta map[string]any, lp any, finish *string) map[string]any {
		return map[string]any{
			"id": id, "object": "chat.completion.chunk", "created": s.created, "model": s.cfg.ModelName,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}},
		}
	}
	if err := out.event(chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil)); err != nil {
		cancelAll(gens)
		return err
	}
	return runAll(gens, func(u update) error {
		if u.err != nil && u.finish == "" {
			return out.event(streamErrorEvent(u.err))
		}
		var lp any
		if req.Logprobs && len(u.tokens) > 0 {
			lp = map[string]any{"content": s.chatLogprobs(u.tokens, req.ReturnTokensAsTokenIDs)}
		}
		if u.text == "" && u.finish == "" && lp == nil {
			return nil
		}
		delta := map[string]any{}
		if u.text != "" {
			delta["content"] = u.text
		}
		return out.event(chunk(delta, lp, finishPtr(u)))
	})
}
