package api_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/observability"
)

// TestTraceContextCrossesTheSocket checks that kvd's spans for a client's
// calls join the client's trace: kvd exports to the console, and the
// client's trace id must show up there on kvd.step.
func TestTraceContextCrossesTheSocket(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	shutdown, err := observability.Setup(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	t.Setenv("OTEL_TRACES_EXPORTER", "console") // for the kvd child
	sock := filepath.Join(t.TempDir(), "kvd.sock")
	d := startKVDWith(t, sock, "--layers", "2", "--kv-heads", "1", "--head-dim", "4", "--kv-memory", "1MiB")
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true,
	}))
	c, err := ipc.Dial(ctx, sock, ipc.Options{Name: "traced"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	c.Open(ctx, 1)
	if _, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 3}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := d.out.String()
		if strings.Contains(out, `"Name":"kvd.step"`) && strings.Contains(out, tid.String()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvd's console spans do not carry trace %s:\n%.2000s", tid, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
