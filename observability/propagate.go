package observability

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
)

// traceparentKey is the W3C Trace Context header, the one field our unix
// socket protocol carries. Baggage and tracestate do not cross the socket.
const traceparentKey = "traceparent"

// Inject returns the W3C traceparent value for the span in ctx, such as
// "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", or "" when ctx
// carries no valid span context. An unsampled span is propagated too (with
// flags 00), so that the next process keeps the decision not to sample.
// It uses the global propagator, which Setup configures; before Setup it
// returns "".
func Inject(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	var c traceparentCarrier
	otel.GetTextMapPropagator().Inject(ctx, &c)
	return c.value
}

// Extract returns ctx carrying the remote span context that traceparent
// describes, so that spans started from it continue the caller's trace.
// For "" or a malformed value it returns ctx unchanged.
func Extract(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, &traceparentCarrier{value: traceparent})
}

// traceparentCarrier is a propagation.TextMapCarrier holding only the
// traceparent field; it spares Inject and Extract a map per call.
type traceparentCarrier struct {
	value string
}

func (c *traceparentCarrier) Get(key string) string {
	if key == traceparentKey {
		return c.value
	}
	return ""
}

func (c *traceparentCarrier) Set(key, value string) {
	if key == traceparentKey {
		c.value = value
	}
}

func (c *traceparentCarrier) Keys() []string {
	return []string{traceparentKey}
}
