package observability

import (
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The OTEL_* variables this package reads itself. The rest (OTLP headers,
// timeouts and TLS, batch processor and span limits, the metric export
// interval) are read by the SDK and the exporters, which log bad values
// instead of failing; the ones here fail Setup with an error naming them.
const (
	envSDKDisabled         = "OTEL_SDK_DISABLED"
	envServiceName         = "OTEL_SERVICE_NAME"
	envResourceAttributes  = "OTEL_RESOURCE_ATTRIBUTES"
	envTracesExporter      = "OTEL_TRACES_EXPORTER"
	envMetricsExporter     = "OTEL_METRICS_EXPORTER"
	envTracesSampler       = "OTEL_TRACES_SAMPLER"
	envTracesSamplerArg    = "OTEL_TRACES_SAMPLER_ARG"
	envOTLPEndpoint        = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envOTLPTracesEndpoint  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envOTLPMetricsEndpoint = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
	envOTLPProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envOTLPTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envOTLPMetricsProtocol = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
)

// config is what Setup builds, decided from the environment before any
// global is touched so that a bad variable leaves the process as it was.
type config struct {
	disabled      bool // OTEL_SDK_DISABLED=true: no-op providers, nothing else read
	otlpTraces    bool
	consoleTraces bool
	otlpMetrics   bool // in addition to the Prometheus reader, which is always there
}

// envError reports a bad value of the environment variable key.
func envError(key, detail string, args ...any) error {
	return fmt.Errorf("%s=%q: %w: %s", key, os.Getenv(key), ErrInvalidConfig, fmt.Sprintf(detail, args...))
}

// getenv is os.Getenv with surrounding space removed; an empty variable
// counts as unset, as the specification asks.
func getenv(key string) string {
	return strings.TrimSpace(os.Getenv(key))
}

func configFromEnv() (config, error) {
	var cfg config
	switch strings.ToLower(getenv(envSDKDisabled)) {
	case "", "false":
	case "true":
		// The kill switch must work even when the rest of the telemetry
		// configuration is broken, so nothing else is read or checked.
		return config{disabled: true}, nil
	default:
		return config{}, envError(envSDKDisabled, "want true or false")
	}

	traces, err := exporterList(envTracesExporter, "otlp", "console", "none")
	if err != nil {
		return config{}, err
	}
	if traces == nil {
		// Unlike the specification's default (otlp), an unset variable
		// means otlp only when there is somewhere to send the spans:
		// a developer running kvd by hand should not get a stream of
		// connection-refused errors from an exporter nobody asked for.
		if getenv(envOTLPEndpoint) != "" || getenv(envOTLPTracesEndpoint) != "" {
			traces = map[string]bool{"otlp": true}
		}
	}
	cfg.otlpTraces = traces["otlp"]
	cfg.consoleTraces = traces["console"]

	// Prometheus is always on because the gateway serves /metrics, so
	// "prometheus" and "none" both mean "no exporter besides it".
	metrics, err := exporterList(envMetricsExporter, "otlp", "prometheus", "none")
	if err != nil {
		return config{}, err
	}
	cfg.otlpMetrics = metrics["otlp"]

	if cfg.otlpTraces {
		if err := checkOTLP(envOTLPTracesEndpoint, envOTLPTracesProtocol); err != nil {
			return config{}, err
		}
	}
	if cfg.otlpMetrics {
		if err := checkOTLP(envOTLPMetricsEndpoint, envOTLPMetricsProtocol); err != nil {
			return config{}, err
		}
	}
	if err := checkSampler(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// exporterList parses a comma-separated exporter list such as
// OTEL_TRACES_EXPORTER. It returns nil when the variable is unset and an
// empty set for "none"; names are case-insensitive.
func exporterList(key string, known ...string) (map[string]bool, error) {
	v := getenv(key)
	if v == "" {
		return nil, nil
	}
	set := make(map[string]bool)
	for name := range strings.SplitSeq(v, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			return nil, envError(key, "unknown exporter %q, want one of %s", name, strings.Join(known, ", "))
		}
		set[name] = true
	}
	if set["none"] && len(set) > 1 {
		return nil, envError(key, "none cannot be combined with other exporters")
	}
	delete(set, "none")
	return set, nil
}

// checkOTLP checks the endpoint and protocol variables that an OTLP/HTTP
// exporter for one signal will read: the signal's own (signalEndpoint,
// signalProtocol) and the general ones. The exporter would log a bad URL
// and then send nowhere; a gRPC protocol would send HTTP to a gRPC port.
func checkOTLP(signalEndpoint, signalProtocol string) error {
	for _, key := range []string{envOTLPEndpoint, signalEndpoint} {
		v := getenv(key)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil {
			return envError(key, "%v", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return envError(key, "want an http:// or https:// URL")
		}
	}
	for _, key := range []string{envOTLPProtocol, signalProtocol} {
		if v := getenv(key); v != "" && v != "http/protobuf" {
			return envError(key, "only http/protobuf is supported")
		}
	}
	return nil
}

// checkSampler checks OTEL_TRACES_SAMPLER and its argument against what
// the Go SDK understands; the SDK itself reads them, but on a bad value it
// only logs and falls back to the default sampler.
func checkSampler() error {
	name := strings.ToLower(getenv(envTracesSampler))
	switch name {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
		return nil
	case "traceidratio", "parentbased_traceidratio":
		arg := getenv(envTracesSamplerArg)
		if arg == "" {
			return nil
		}
		ratio, err := strconv.ParseFloat(arg, 64)
		if err != nil || ratio < 0 || ratio > 1 {
			return envError(envTracesSamplerArg, "want a ratio between 0 and 1 for sampler %s", name)
		}
		return nil
	default:
		return envError(envTracesSampler, "unsupported sampler, want always_on, always_off, traceidratio or their parentbased_ forms")
	}
}
