// Package api is the gateway's OpenAI-compatible HTTP layer on fasthttp:
// /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics.
// It tokenizes, validates, hands requests to the scheduler, detokenizes
// incrementally, applies stop strings, and writes JSON or server-sent
// events exactly as OpenAI does. Every error a client can cause is an
// OpenAI-shaped JSON error with a 4xx status; nothing a client sends may
// crash the server.
package api

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvd-project/kvd/gateway/sched"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/observability"
)

// Config is what the server needs.
type Config struct {
	Tokenizer   *tokenizer.Tokenizer
	Scheduler   *sched.Scheduler
	ModelName   string // the id clients send as "model"
	MaxModelLen int
	VocabSize   int
	APIKey      string // empty: no authentication
	Logger      *slog.Logger
	// Ready reports whether the server can take requests (kvd reachable).
	Ready func(context.Context) error
}

// Server answers HTTP requests.
type Server struct {
	cfg     Config
	log     *slog.Logger
	created int64
	metrics fasthttp.RequestHandler
	base    context.Context
}

var tracer = observability.Tracer("gateway/api")

// New returns a server; base is cancelled when the gateway shuts down.
func New(base context.Context, cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg: cfg, log: cfg.Logger, created: time.Now().Unix(), base: base,
		metrics: fasthttpadaptor.NewFastHTTPHandler(observability.MetricsHandler()),
	}
}

// apiError is OpenAI's error body.
type apiError struct {
	status     int
	Message    string  `json:"message"`
	Type       string  `json:"type"`
	Param      *string `json:"param"`
	Code       *string `json:"code"`
	retryAfter int
}

func (e *apiError) Error() string { return e.Message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: fasthttp.StatusBadRequest, Type: "invalid_request_error", Message: fmt.Sprintf(format, args...)}
}

func badParam(param, format string, args ...any) *apiError {
	e := badRequest(format, args...)
	e.Param = &param
	return e
}

func withCode(e *apiError, code string) *apiError {
	e.Code = &code
	return e
}

func writeError(ctx *fasthttp.RequestCtx, e *apiError) {
	if e.retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	writeJSON(ctx, e.status, map[string]any{"error": e})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = fasthttp.StatusInternalServerError, []byte(`{"error":{"message":"encoding the response failed","type":"server_error","param":null,"code":null}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

// Handler routes a request.
func (s *Server) Handler(ctx *fasthttp.RequestCtx) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panic", "panic", p, "stack", string(debug.Stack()))
			writeError(ctx, &apiError{status: fasthttp.StatusInternalServerError, Type: "server_error", Message: "internal error"})
		}
	}()
	path, method := string(ctx.Path()), string(ctx.Method())
	switch path {
	case "/health":
		if s.cfg.Ready != nil {
			if err := s.cfg.Ready(ctx); err != nil {
				writeError(ctx, &apiError{status: fasthttp.StatusServiceUnavailable, Type: "server_error", Message: err.Error()})
				return
			}
		}
		ctx.SetStatusCode(fasthttp.StatusOK)
		return
	case "/metrics":
		s.metrics(ctx)
		return
	}
	if !s.authorized(ctx) {
		writeError(ctx, &apiError{status: fasthttp.StatusUnauthorized, Type: "invalid_request_error", Message: "missing or invalid API key: send Authorization: Bearer <key>"})
		return
	}
	routes := map[string]struct {
		method string
		fn     func(*fasthttp.RequestCtx) *apiError
	}{
		"/v1/models":           {"GET", s.models},
		"/v1/completions":      {"POST", s.completions},
		"/v1/chat/completions": {"POST", s.chat},
		"/v1/kvd/score":        {"POST", s.score},
	}
	r, ok := routes[path]
	switch {
	case !ok:
		writeError(ctx, &apiError{status: fasthttp.StatusNotFound, Type: "invalid_request_error", Message: fmt.Sprintf("no route %s %s", method, path)})
	case r.method != method:
		ctx.Response.Header.Set("Allow", r.method)
		writeError(ctx, &apiError{status: fasthttp.StatusMethodNotAllowed, Type: "invalid_request_error", Message: fmt.Sprintf("%s needs %s, not %s", path, r.method, method)})
	default:
		start := time.Now()
		if e := r.fn(ctx); e != nil {
			writeError(ctx, e)
		}
		s.log.Info("request", "method", method, "path", path, "status", ctx.Response.StatusCode(),
			"seconds", time.Since(start).Seconds(), "remote", ctx.RemoteAddr().String())
	}
}

func (s *Server) authorized(ctx *fasthttp.RequestCtx) bool {
	if s.cfg.APIKey == "" {
		return true
	}
	want := "Bearer " + s.cfg.APIKey
	return subtle.ConstantTimeCompare(ctx.Request.Header.Peek("Authorization"), []byte(want)) == 1
}

func (s *Server) models(ctx *fasthttp.RequestCtx) *apiError {
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": s.cfg.ModelName, "object": "model", "created": s.created, "owned_by": "kvd",
			"max_model_len": s.cfg.MaxModelLen,
		}},
	})
	return nil
}

// checkModel accepts the served name (or none, as vLLM does).
func (s *Server) checkModel(name string) *apiError {
	if name != "" && name != s.cfg.ModelName {
		return withCode(badParam("model", "The model `%s` does not exist; this server serves `%s`.", name, s.cfg.ModelName), "model_not_found")
	}
	return nil
}

// decodeBody parses the JSON body into v, with OpenAI-style messages for
// malformed JSON and wrong types.
func decodeBody(ctx *fasthttp.RequestCtx, v any) *apiError {
	body := ctx.PostBody()
	if len(body) == 0 {
		return badRequest("the request body is empty; send a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := strings.TrimPrefix(te.Field, "samplingFields.")
			return badParam(field, "%s: expected %s, got a JSON %s", field, te.Type, te.Value)
		}
		return badRequest("malformed JSON: %v", err)
	}
	return nil
}

func randomID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// requestContext is the context of one HTTP request: cancelled when the
// gateway stops or the request ends, carrying the request's trace.
func (s *Server) requestContext(ctx *fasthttp.RequestCtx, name string) (context.Context, context.CancelFunc, trace.Span) {
	c, cancel := context.WithCancel(s.base)
	// A caller's W3C traceparent makes this request part of its trace.
	c = observability.Extract(c, string(ctx.Request.Header.Peek("traceparent")))
	c, span := tracer.Start(c, name, trace.WithSpanKind(trace.SpanKindServer))
	watchPeer(c, ctx.Conn(), cancel)
	return c, cancel, span
}
