// Package observability owns OpenTelemetry setup for both programs, kvd and
// gateway, and their logging. Other packages import only this one: they get
// tracers from Tracer, meters from Meter, carry trace context over the unix
// socket with Inject and Extract, and log through a *slog.Logger from
// NewLogger.
//
// Everything is configured by the standard OTEL_* environment variables
// (see Setup). No exporter configured means no cost: the global tracer
// provider stays a no-op one, whose spans record and export nothing.
// Metrics are the exception, since the gateway always serves /metrics: they
// are always collected, for MetricsHandler to serve.
//
// This package imports no other package of this module.
package observability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// ErrInvalidConfig is wrapped by every error about a bad setting: an OTEL_*
// variable, a log level or a log format. The message names the setting.
var ErrInvalidConfig = errors.New("invalid observability setting")

// Setup configures the global TracerProvider, MeterProvider and text-map
// propagator (W3C TraceContext and Baggage) from the environment, as the
// OpenTelemetry specification defines the variables:
//
//   - OTEL_SDK_DISABLED=true: no-op providers for traces and metrics
//     (MetricsHandler then serves nothing); every other variable is ignored.
//   - OTEL_TRACES_EXPORTER: a comma-separated list of otlp (OTLP over
//     HTTP/protobuf) and console (JSON lines on stdout), or none. Unset means
//     otlp if OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
//     is set, else none. With none, the global tracer provider is a no-op
//     one: no exporter configured means no cost.
//   - OTEL_METRICS_EXPORTER: otlp adds OTLP/HTTP export to the Prometheus
//     registry that MetricsHandler always serves; prometheus and none add
//     nothing.
//   - OTEL_SERVICE_NAME overrides service; OTEL_RESOURCE_ATTRIBUTES adds
//     resource attributes (and may set service.name, which
//     OTEL_SERVICE_NAME in turn overrides).
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, and the OTLP
//     exporter's own OTEL_EXPORTER_OTLP_* variables, are read by the SDK.
//     Setup checks the sampler, endpoint and protocol variables first, since
//     the SDK would only log a bad value.
//
// An invalid value gives an error wrapping ErrInvalidConfig that names the
// variable, and then nothing global has changed.
//
// Call Setup once, early in main, and call shutdown before exiting: it
// flushes buffered spans and metrics and puts the no-op providers back.
// Tracers and meters obtained before Setup start working once it runs.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	return setup(ctx, service, os.Stdout)
}

// setup is Setup with the console exporter's writer as a parameter, so
// that tests can read the spans without touching os.Stdout.
func setup(ctx context.Context, service string, console io.Writer) (func(context.Context) error, error) {
	cfg, err := configFromEnv()
	if err != nil {
		return nil, err
	}
	// The propagator is set even with the SDK off so that a process with
	// no exporter still passes its caller's trace on to the next one.
	propagator := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	if cfg.disabled {
		setNoop()
		otel.SetTextMapPropagator(propagator)
		return func(context.Context) error { return nil }, nil
	}

	res, err := newResource(ctx, service)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	mp, err := newMeterProvider(ctx, res, cfg, reg)
	if err != nil {
		return nil, err
	}
	tp, err := newTracerProvider(ctx, res, cfg, console)
	if err != nil {
		return nil, errors.Join(err, mp.Shutdown(ctx))
	}

	if tp != nil {
		otel.SetTracerProvider(tp)
	} else {
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
	}
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagator)
	setScrape(reg)

	var once sync.Once
	return func(ctx context.Context) error {
		var err error
		once.Do(func() {
			// No-op first, so nothing new reaches providers being shut down.
			setNoop()
			if tp != nil {
				err = tp.Shutdown(ctx)
			}
			err = errors.Join(err, mp.Shutdown(ctx))
		})
		return err
	}, nil
}

// setNoop installs no-op tracer and meter providers and an empty registry
// for MetricsHandler.
func setNoop() {
	otel.SetTracerProvider(tracenoop.NewTracerProvider())
	otel.SetMeterProvider(metricnoop.NewMeterProvider())
	setScrape(prometheus.NewRegistry())
}

func newResource(ctx context.Context, service string) (*resource.Resource, error) {
	if service == "" {
		// The specification's fallback, so that spans never lack a service.
		service = "unknown_service:" + filepath.Base(os.Args[0])
	}
	// Later options override earlier ones: the environment beats the
	// argument, and within the environment fromEnv lets OTEL_SERVICE_NAME
	// beat service.name in OTEL_RESOURCE_ATTRIBUTES.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithFromEnv(),
	)
	if err != nil {
		// Only the environment detector can fail, on a malformed list.
		return nil, envError(envResourceAttributes, "%v", err)
	}
	return res, nil
}

// newTracerProvider returns nil when no trace exporter is configured.
func newTracerProvider(ctx context.Context, res *resource.Resource, cfg config, console io.Writer) (*sdktrace.TracerProvider, error) {
	if !cfg.otlpTraces && !cfg.consoleTraces {
		return nil, nil
	}
	// The sampler comes from OTEL_TRACES_SAMPLER, which the SDK reads.
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if cfg.otlpTraces {
		// Creating the exporter does not connect; it reads its
		// OTEL_EXPORTER_OTLP_* variables.
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	if cfg.consoleTraces {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(console))
		if err != nil {
			return nil, fmt.Errorf("console trace exporter: %w", err)
		}
		// Synchronous: the console is for a developer watching, who wants
		// a span printed when it ends, not when a batch fills.
		opts = append(opts, sdktrace.WithSyncer(exp))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

func newMeterProvider(ctx context.Context, res *resource.Resource, cfg config, reg *prometheus.Registry) (*sdkmetric.MeterProvider, error) {
	prom, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	opts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	if cfg.otlpMetrics {
		exp, err := otlpmetrichttp.New(ctx)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("otlp metric exporter: %w", err), prom.Shutdown(ctx))
		}
		// The interval comes from OTEL_METRIC_EXPORT_INTERVAL.
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	return sdkmetric.NewMeterProvider(opts...), nil
}

// scrape is the handler for the registry of the current Setup. It is
// swapped rather than registered into one long-lived registry because each
// Setup makes a new Prometheus exporter, and a shut-down one cannot be
// taken out of a registry again.
var scrape atomic.Pointer[http.Handler]

// noMetrics is what MetricsHandler serves before the first Setup.
var noMetrics = promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{})

func setScrape(reg *prometheus.Registry) {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	scrape.Store(&h)
}

// MetricsHandler serves, in the Prometheus text format, the metrics
// recorded through Meter. It is a plain net/http handler (the gateway
// adapts it to fasthttp), may be obtained before Setup, and is safe for
// concurrent use. Before Setup, and after its shutdown, it serves no
// metrics.
func MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := scrape.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		noMetrics.ServeHTTP(w, r)
	})
}

// Tracer returns a tracer from the global provider that Setup configures.
// name is the instrumenting package, such as "kvd/pool".
func Tracer(name string) trace.Tracer {
	return otel.Tracer(name)
}

// Meter returns a meter from the global provider that Setup configures.
// name is the instrumenting package, such as "gateway/runner".
func Meter(name string) metric.Meter {
	return otel.Meter(name)
}
