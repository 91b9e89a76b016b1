package observability

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// envLogLevel names the variable LogLevelFromEnv reads.
const envLogLevel = "KVD_LOG_LEVEL"

// NewLogger returns a logger writing to w at level (debug, info, warn or
// error) in format (text or json); both are case-insensitive. A record
// logged with a context that carries a valid span (InfoContext and the
// like) gets trace_id and span_id attributes, so that logs and traces can
// be joined.
func NewLogger(w io.Writer, level string, format string) (*slog.Logger, error) {
	var lvl slog.Level
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		lvl = slog.LevelDebug
	case "info":
		lvl = slog.LevelInfo
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	default:
		return nil, fmt.Errorf("log level %q: %w: want debug, info, warn or error", level, ErrInvalidConfig)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: %w: want text or json", format, ErrInvalidConfig)
	}
	return slog.New(traceHandler{h}), nil
}

// LogLevelFromEnv returns KVD_LOG_LEVEL, or "info" when it is unset or
// empty. NewLogger checks the value.
func LogLevelFromEnv() string {
	if v := strings.TrimSpace(os.Getenv(envLogLevel)); v != "" {
		return v
	}
	return "info"
}

// traceHandler adds the trace and span ids of the record's context.
type traceHandler struct {
	slog.Handler
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(
			slog.String("trace_id", sc.TraceID().String()),
			slog.String("span_id", sc.SpanID().String()),
		)
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
