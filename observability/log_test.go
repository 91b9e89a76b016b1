package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestNewLoggerRejectsBadValues(t *testing.T) {
	tests := []struct {
		name          string
		level, format string
		wantInError   string
	}{
		{name: "unknown level", level: "verbose", format: "text", wantInError: `"verbose"`},
		{name: "empty level", level: "", format: "text", wantInError: `log level ""`},
		{name: "numeric level", level: "4", format: "json", wantInError: `"4"`},
		{name: "unknown format", level: "info", format: "xml", wantInError: `"xml"`},
		{name: "empty format", level: "info", format: "", wantInError: `log format ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, err := NewLogger(io.Discard, tt.level, tt.format)
			if err == nil {
				t.Fatalf("NewLogger(%q, %q) = %v, want an error", tt.level, tt.format, logger)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantInError) {
				t.Errorf("error %q does not name %s", err, tt.wantInError)
			}
		})
	}
}

func TestNewLoggerLevels(t *testing.T) {
	tests := []struct {
		name  string
		level string
		want  []string // messages written, in order
	}{
		{name: "debug", level: "debug", want: []string{"d", "i", "w", "e"}},
		{name: "info", level: "info", want: []string{"i", "w", "e"}},
		{name: "warn", level: "warn", want: []string{"w", "e"}},
		{name: "error", level: "error", want: []string{"e"}},
		{name: "case-insensitive", level: "WARN", want: []string{"w", "e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			logger, err := NewLogger(&out, tt.level, "json")
			if err != nil {
				t.Fatal(err)
			}
			logger.Debug("d")
			logger.Info("i")
			logger.Warn("w")
			logger.Error("e")
			var got []string
			for _, r := range decodeJSONLogs(t, &out) {
				got = append(got, r["msg"].(string))
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("wrote %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewLoggerFormats(t *testing.T) {
	tests := []struct {
		name   string
		format string
		want   string
	}{
		{name: "text", format: "text", want: `level=INFO msg="block evicted" block=7`},
		{name: "json", format: "json", want: `"level":"INFO","msg":"block evicted","block":7}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			logger, err := NewLogger(&out, "info", tt.format)
			if err != nil {
				t.Fatal(err)
			}
			logger.Info("block evicted", "block", 7)
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("wrote %q, want it to contain %q", out.String(), tt.want)
			}
		})
	}
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	var out bytes.Buffer
	logger, err := NewLogger(&out, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: testTraceID, SpanID: testSpanID})
	logger.With("component", "pool").InfoContext(trace.ContextWithSpanContext(context.Background(), sc), "in a span")
	logger.InfoContext(context.Background(), "outside")

	records := decodeJSONLogs(t, &out)
	if len(records) != 2 {
		t.Fatalf("wrote %d records, want 2", len(records))
	}
	if got := records[0]["trace_id"]; got != testTraceID.String() {
		t.Errorf("trace_id %v, want %s", got, testTraceID)
	}
	if got := records[0]["span_id"]; got != testSpanID.String() {
		t.Errorf("span_id %v, want %s", got, testSpanID)
	}
	if got := records[0]["component"]; got != "pool" {
		t.Errorf("component %v, want pool (With must keep the trace handler)", got)
	}
	if _, ok := records[1]["trace_id"]; ok {
		t.Errorf("record outside a span has trace_id %v", records[1]["trace_id"])
	}
}

func TestLogLevelFromEnv(t *testing.T) {
	tests := []struct {
		name, env, want string
	}{
		{name: "unset", env: "", want: "info"},
		{name: "blank", env: "  ", want: "info"},
		{name: "set", env: "debug", want: "debug"},
		{name: "passed through unchecked", env: "loud", want: "loud"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envLogLevel, tt.env)
			if got := LogLevelFromEnv(); got != tt.want {
				t.Errorf("LogLevelFromEnv() = %q, want %q", got, tt.want)
			}
		})
	}
}

func decodeJSONLogs(t *testing.T, r io.Reader) []map[string]any {
	t.Helper()
	var records []map[string]any
	dec := json.NewDecoder(r)
	for dec.More() {
		var rec map[string]any
		if err := dec.Decode(&rec); err != nil {
			t.Fatal(err)
		}
		records = append(records, rec)
	}
	return records
}
