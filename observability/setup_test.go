package observability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// otelEnv is every variable that could change what Setup does; clearEnv
// empties them so that the environment the tests run in does not leak in.
var otelEnv = []string{
	envSDKDisabled, envServiceName, envResourceAttributes,
	envTracesExporter, envMetricsExporter, envTracesSampler, envTracesSamplerArg,
	envOTLPEndpoint, envOTLPTracesEndpoint, envOTLPMetricsEndpoint,
	envOTLPProtocol, envOTLPTracesProtocol, envOTLPMetricsProtocol,
	"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
	"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_METRIC_EXPORT_INTERVAL",
}

// clearEnv empties the OTEL_* variables and then sets env.
func clearEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, key := range otelEnv {
		t.Setenv(key, "")
	}
	for key, v := range env {
		t.Setenv(key, v)
	}
}

// mustSetup runs setup and registers its shutdown; the returned function
// shuts down early (flushing spans) and may be called again by the cleanup.
func mustSetup(t *testing.T, service string, console io.Writer) func() {
	t.Helper()
	shutdown, err := setup(context.Background(), service, console)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	stop := func() {
		if err := shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// exportedSpan is the part of stdouttrace's JSON that the tests look at.
type exportedSpan struct {
	Name        string
	SpanContext struct {
		TraceID, SpanID, TraceFlags string
	}
	Parent struct {
		TraceID, SpanID string
		Remote          bool
	}
	Resource []struct {
		Key   string
		Value struct{ Value any }
	}
}

func (s exportedSpan) resource(key string) any {
	for _, kv := range s.Resource {
		if kv.Key == key {
			return kv.Value.Value
		}
	}
	return nil
}

// readSpans decodes the console exporter's output, one JSON span a line.
func readSpans(t *testing.T, out []byte) []exportedSpan {
	t.Helper()
	var spans []exportedSpan
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var s exportedSpan
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("console output line %q: %v", sc.Text(), err)
		}
		spans = append(spans, s)
	}
	return spans
}

func TestSetupConsoleExporter(t *testing.T) {
	tests := []struct {
		name        string
		env         map[string]string
		wantSpans   int
		wantService string
		wantAttrs   map[string]string
	}{
		{
			name:        "service from the argument",
			env:         map[string]string{envTracesExporter: "console"},
			wantSpans:   1,
			wantService: "gateway",
		},
		{
			name:        "exporter names are case-insensitive",
			env:         map[string]string{envTracesExporter: " Console "},
			wantSpans:   1,
			wantService: "gateway",
		},
		{
			name:        "OTEL_SERVICE_NAME overrides the argument",
			env:         map[string]string{envTracesExporter: "console", envServiceName: "gateway-canary"},
			wantSpans:   1,
			wantService: "gateway-canary",
		},
		{
			name: "OTEL_RESOURCE_ATTRIBUTES adds attributes and may name the service",
			env: map[string]string{
				envTracesExporter:     "console",
				envResourceAttributes: "service.name=from-attrs,deployment.environment=test",
			},
			wantSpans:   1,
			wantService: "from-attrs",
			wantAttrs:   map[string]string{"deployment.environment": "test"},
		},
		{
			name: "OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES",
			env: map[string]string{
				envTracesExporter:     "console",
				envServiceName:        "from-name",
				envResourceAttributes: "service.name=from-attrs",
			},
			wantSpans:   1,
			wantService: "from-name",
		},
		{
			name:      "always_off sampler exports nothing",
			env:       map[string]string{envTracesExporter: "console", envTracesSampler: "always_off"},
			wantSpans: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t, tt.env)
			var out bytes.Buffer
			stop := mustSetup(t, "gateway", &out)

			_, span := Tracer("gateway/http").Start(context.Background(), "tokenize")
			span.End()
			stop()

			spans := readSpans(t, out.Bytes())
			if len(spans) != tt.wantSpans {
				t.Fatalf("exported %d spans, want %d; output:\n%s", len(spans), tt.wantSpans, out.String())
			}
			if tt.wantSpans == 0 {
				return
			}
			s := spans[0]
			if s.Name != "tokenize" {
				t.Errorf("span name %q, want tokenize", s.Name)
			}
			if got := s.resource("service.name"); got != tt.wantService {
				t.Errorf("service.name %v, want %q", got, tt.wantService)
			}
			for key, want := range tt.wantAttrs {
				if got := s.resource(key); got != want {
					t.Errorf("resource %s = %v, want %q", key, got, want)
				}
			}
		})
	}
}

func TestSetupNoExporterIsNoop(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{name: "nothing set"},
		{
			name: "OTEL_TRACES_EXPORTER=none beats an endpoint",
			env:  map[string]string{envTracesExporter: "none", envOTLPEndpoint: "http://127.0.0.1:1"},
		},
		{
			name: "OTEL_SDK_DISABLED ignores every other variable",
			env: map[string]string{
				envSDKDisabled:    "TRUE",
				envTracesExporter: "console",
				envTracesSampler:  "bogus",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t, tt.env)
			var out bytes.Buffer
			stop := mustSetup(t, "kvd", &out)

			ctx, span := Tracer("kvd/pool").Start(context.Background(), "reserve")
			if span.IsRecording() {
				t.Error("span is recording, want a no-op span")
			}
			if span.SpanContext().IsValid() {
				t.Error("span has a valid span context, want none")
			}
			if tp := Inject(ctx); tp != "" {
				t.Errorf("Inject of a no-op span = %q, want \"\"", tp)
			}
			span.End()
			stop()
			if out.Len() != 0 {
				t.Errorf("console output %q, want none", out.String())
			}
		})
	}
}

func TestSetupInvalidEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{
			name:    "unknown trace exporter",
			env:     map[string]string{envTracesExporter: "bogus"},
			wantVar: envTracesExporter,
		},
		{
			name:    "none with another trace exporter",
			env:     map[string]string{envTracesExporter: "none,console"},
			wantVar: envTracesExporter,
		},
		{
			name:    "unsupported metrics exporter",
			env:     map[string]string{envMetricsExporter: "console"},
			wantVar: envMetricsExporter,
		},
		{
			name:    "OTEL_SDK_DISABLED not a boolean",
			env:     map[string]string{envSDKDisabled: "yes"},
			wantVar: envSDKDisabled,
		},
		{
			name:    "unknown sampler",
			env:     map[string]string{envTracesSampler: "sometimes"},
			wantVar: envTracesSampler,
		},
		{
			name:    "sampler ratio above one",
			env:     map[string]string{envTracesSampler: "parentbased_traceidratio", envTracesSamplerArg: "2"},
			wantVar: envTracesSamplerArg,
		},
		{
			name:    "sampler ratio not a number",
			env:     map[string]string{envTracesSampler: "traceidratio", envTracesSamplerArg: "half"},
			wantVar: envTracesSamplerArg,
		},
		{
			name:    "endpoint without a scheme",
			env:     map[string]string{envTracesExporter: "", envOTLPEndpoint: "localhost:4318"},
			wantVar: envOTLPEndpoint,
		},
		{
			name:    "traces endpoint not http",
			env:     map[string]string{envTracesExporter: "otlp", envOTLPTracesEndpoint: "grpc://collector:4317"},
			wantVar: envOTLPTracesEndpoint,
		},
		{
			name:    "metrics endpoint without a host",
			env:     map[string]string{envMetricsExporter: "otlp", envOTLPMetricsEndpoint: "http://"},
			wantVar: envOTLPMetricsEndpoint,
		},
		{
			name:    "gRPC protocol",
			env:     map[string]string{envTracesExporter: "otlp", envOTLPEndpoint: "http://collector:4317", envOTLPProtocol: "grpc"},
			wantVar: envOTLPProtocol,
		},
		{
			name:    "malformed resource attributes",
			env:     map[string]string{envResourceAttributes: "deployment.environment"},
			wantVar: envResourceAttributes,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A working setup first, to check that a failed one leaves it.
			clearEnv(t, map[string]string{envTracesExporter: "console"})
			mustSetup(t, "kvd", io.Discard)
			before := otel.GetTracerProvider()

			for key, v := range tt.env {
				t.Setenv(key, v)
			}
			shutdown, err := setup(context.Background(), "kvd", io.Discard)
			if err == nil {
				_ = shutdown(context.Background())
				t.Fatal("setup succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantVar) {
				t.Errorf("error %q does not name %s", err, tt.wantVar)
			}
			if otel.GetTracerProvider() != before {
				t.Error("failed setup replaced the global tracer provider")
			}
		})
	}
}

// collector is a fake OTLP/HTTP endpoint that records the paths posted to.
type collector struct {
	mu    sync.Mutex
	paths []string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want a protobuf POST", http.StatusBadRequest)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	c.mu.Lock()
	c.paths = append(c.paths, r.URL.Path)
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
}

func (c *collector) posted() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	paths := slices.Clone(c.paths)
	slices.Sort(paths)
	return slices.Compact(paths)
}

func TestSetupOTLPExporter(t *testing.T) {
	var c collector
	srv := httptest.NewServer(&c)
	defer srv.Close()

	tests := []struct {
		name      string
		env       map[string]string
		wantPaths []string
	}{
		{
			name:      "an endpoint alone turns on otlp traces",
			env:       map[string]string{envOTLPEndpoint: srv.URL},
			wantPaths: []string{"/v1/traces"},
		},
		{
			name:      "a traces endpoint alone turns on otlp traces",
			env:       map[string]string{envOTLPTracesEndpoint: srv.URL + "/v1/traces"},
			wantPaths: []string{"/v1/traces"},
		},
		{
			name: "otlp metrics as well",
			env: map[string]string{
				envOTLPEndpoint:    srv.URL,
				envOTLPProtocol:    "http/protobuf",
				envMetricsExporter: "otlp",
				envTracesExporter:  "otlp,console",
			},
			wantPaths: []string{"/v1/metrics", "/v1/traces"},
		},
		{
			name:      "otlp metrics only",
			env:       map[string]string{envOTLPEndpoint: srv.URL, envTracesExporter: "none", envMetricsExporter: "otlp"},
			wantPaths: []string{"/v1/metrics"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.mu.Lock()
			c.paths = nil
			c.mu.Unlock()
			clearEnv(t, tt.env)
			stop := mustSetup(t, "kvd", io.Discard)

			ctx := context.Background()
			counter, err := Meter("kvd/pool").Int64Counter("kvd_blocks_evicted")
			if err != nil {
				t.Fatal(err)
			}
			counter.Add(ctx, 1)
			_, span := Tracer("kvd/pool").Start(ctx, "evict")
			span.End()
			stop() // flushes both signals

			if got := c.posted(); !slices.Equal(got, tt.wantPaths) {
				t.Errorf("collector got posts to %v, want %v", got, tt.wantPaths)
			}
		})
	}
}

// scrapeMetrics GETs the handler as Prometheus would.
func scrapeMetrics(t *testing.T, h http.Handler) (body, contentType string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", rec.Code, rec.Body.String())
	}
	return rec.Body.String(), rec.Header().Get("Content-Type")
}

// sampleValue finds the sample of metric whose labels include label and
// returns its value as written, or "" when there is none.
func sampleValue(body, metric, label string) string {
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, metric+"{") || !strings.Contains(line, label) {
			continue
		}
		return line[strings.LastIndexByte(line, ' ')+1:]
	}
	return ""
}

func TestMetricsHandler(t *testing.T) {
	clearEnv(t, nil)
	handler := MetricsHandler() // before Setup on purpose: it must follow Setup
	stop := mustSetup(t, "gateway", io.Discard)

	ctx := context.Background()
	requests, err := Meter("gateway/http").Int64Counter("gateway_requests", metric.WithDescription("Requests served."))
	if err != nil {
		t.Fatal(err)
	}
	generate := metric.WithAttributes(attribute.String("route", "generate"))
	requests.Add(ctx, 2, generate)
	requests.Add(ctx, 1, generate)
	requests.Add(ctx, 5, metric.WithAttributes(attribute.String("route", "health")))

	body, contentType := scrapeMetrics(t, handler)
	if !strings.HasPrefix(contentType, "text/plain") {
		t.Errorf("Content-Type %q, want the Prometheus text format", contentType)
	}
	for _, want := range []string{
		"# HELP gateway_requests_total Requests served.",
		"# TYPE gateway_requests_total counter",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	tests := []struct {
		name  string
		label string
		want  string
	}{
		{name: "generate", label: `route="generate"`, want: "3"},
		{name: "health", label: `route="health"`, want: "5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sampleValue(body, "gateway_requests_total", tt.label); got != tt.want {
				t.Errorf("gateway_requests_total{%s} = %q, want %q; metrics:\n%s", tt.label, got, tt.want, body)
			}
		})
	}
	if !strings.Contains(body, `service_name="gateway"`) {
		t.Errorf("metrics lack the service in target_info; metrics:\n%s", body)
	}

	stop()
	if body, _ := scrapeMetrics(t, handler); strings.Contains(body, "gateway_requests_total") {
		t.Errorf("after shutdown the handler still serves gateway_requests_total:\n%s", body)
	}
}
