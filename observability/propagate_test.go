package observability

import (
	"bytes"
	"context"
	"io"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

var (
	testTraceID = trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	testSpanID  = trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}
)

func TestInjectExtractRoundTrip(t *testing.T) {
	clearEnv(t, nil)
	mustSetup(t, "gateway", io.Discard) // installs the propagator

	tests := []struct {
		name  string
		flags trace.TraceFlags
		want  string
	}{
		{
			name:  "sampled",
			flags: trace.FlagsSampled,
			want:  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
		{
			name:  "not sampled keeps the decision",
			flags: 0,
			want:  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := trace.NewSpanContext(trace.SpanContextConfig{
				TraceID:    testTraceID,
				SpanID:     testSpanID,
				TraceFlags: tt.flags,
			})
			tp := Inject(trace.ContextWithSpanContext(context.Background(), sent))
			if tp != tt.want {
				t.Fatalf("Inject = %q, want %q", tp, tt.want)
			}

			got := trace.SpanContextFromContext(Extract(context.Background(), tp))
			if got.TraceID() != sent.TraceID() {
				t.Errorf("trace id %s, want %s", got.TraceID(), sent.TraceID())
			}
			if got.SpanID() != sent.SpanID() {
				t.Errorf("span id %s, want %s", got.SpanID(), sent.SpanID())
			}
			if got.IsSampled() != sent.IsSampled() {
				t.Errorf("sampled %v, want %v", got.IsSampled(), sent.IsSampled())
			}
			if !got.IsRemote() {
				t.Error("extracted span context is not marked remote")
			}
		})
	}
}

func TestInjectWithoutSpan(t *testing.T) {
	clearEnv(t, nil)
	mustSetup(t, "gateway", io.Discard)
	if tp := Inject(context.Background()); tp != "" {
		t.Errorf("Inject with no span = %q, want \"\"", tp)
	}
}

func TestExtractIgnoresMalformed(t *testing.T) {
	clearEnv(t, nil)
	mustSetup(t, "kvd", io.Discard)

	// A context that already has a span, which a bad value must not disturb.
	local := trace.NewSpanContext(trace.SpanContextConfig{TraceID: testTraceID, SpanID: testSpanID})
	ctx := trace.ContextWithSpanContext(context.Background(), local)

	tests := []struct {
		name        string
		traceparent string
	}{
		{name: "empty", traceparent: ""},
		{name: "garbage", traceparent: "not a traceparent"},
		{name: "missing flags", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"},
		{name: "zero trace id", traceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{name: "zero span id", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
		{name: "forbidden version ff", traceparent: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{name: "short trace id", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01"},
		{name: "not hex", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Extract(ctx, tt.traceparent)
			if got != ctx {
				t.Errorf("Extract(%q) returned a new context, want ctx unchanged (now carrying %v)",
					tt.traceparent, trace.SpanContextFromContext(got))
			}
		})
	}
}

// TestExtractContinuesTrace is the cross-process case: kvd extracts the
// gateway's traceparent and its spans join the gateway's trace.
func TestExtractContinuesTrace(t *testing.T) {
	clearEnv(t, map[string]string{envTracesExporter: "console"})
	var out bytes.Buffer
	stop := mustSetup(t, "kvd", &out)

	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx, span := Tracer("kvd/pool").Start(Extract(context.Background(), incoming), "reserve")
	outgoing := Inject(ctx)
	span.End()
	stop()

	spans := readSpans(t, out.Bytes())
	if len(spans) != 1 {
		t.Fatalf("exported %d spans, want 1; output:\n%s", len(spans), out.String())
	}
	s := spans[0]
	if s.SpanContext.TraceID != testTraceID.String() {
		t.Errorf("span trace id %s, want the caller's %s", s.SpanContext.TraceID, testTraceID)
	}
	if s.Parent.SpanID != testSpanID.String() || !s.Parent.Remote {
		t.Errorf("span parent %+v, want the caller's span %s, remote", s.Parent, testSpanID)
	}
	if want := "00-" + s.SpanContext.TraceID + "-" + s.SpanContext.SpanID + "-01"; outgoing != want {
		t.Errorf("Inject inside the span = %q, want %q", outgoing, want)
	}
}
