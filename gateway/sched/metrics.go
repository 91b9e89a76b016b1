package sched

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel/metric"

	"github.com/kvd-project/kvd/observability"
)

// metrics are the scheduler's OpenTelemetry instruments, exported for
// Prometheus at /metrics under names a vLLM user will recognise.
type metrics struct {
	waiting     atomic.Int64
	ttft        metric.Float64Histogram
	tpot        metric.Float64Histogram
	e2e         metric.Float64Histogram
	generated   metric.Int64Counter
	prompt      metric.Int64Counter
	preemptions metric.Int64Counter
	ahead       metric.Int64Counter
}

var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}

func newMetrics(s *Scheduler) (*metrics, error) {
	m := &metrics{}
	meter := observability.Meter("gateway/sched")
	var err error
	hist := func(name, desc string) metric.Float64Histogram {
		if err != nil {
			return nil
		}
		var h metric.Float64Histogram
		h, err = meter.Float64Histogram(name, metric.WithDescription(desc), metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(latencyBuckets...))
		return h
	}
	m.ttft = hist("kvd_time_to_first_token_seconds", "Time from arrival to the first generated token.")
	m.tpot = hist("kvd_time_per_output_token_seconds", "Time between consecutive generated tokens.")
	m.e2e = hist("kvd_e2e_request_latency_seconds", "Time from arrival to the last token.")
	if err != nil {
		return nil, err
	}
	if m.generated, err = meter.Int64Counter("kvd_generation_tokens", metric.WithDescription("Generated tokens; its rate is output tokens per second.")); err != nil {
		return nil, err
	}
	if m.prompt, err = meter.Int64Counter("kvd_prompt_tokens", metric.WithDescription("Prompt tokens of admitted requests.")); err != nil {
		return nil, err
	}
	if m.preemptions, err = meter.Int64Counter("kvd_num_preemptions", metric.WithDescription("Sequences preempted for recompute because the KV pool was full.")); err != nil {
		return nil, err
	}
	if m.ahead, err = meter.Int64Counter("kvd_steps_scheduled_ahead", metric.WithDescription("Steps scheduled and reserved while the step before ran (--async-scheduling).")); err != nil {
		return nil, err
	}
	running, err := meter.Int64ObservableGauge("kvd_num_requests_running", metric.WithDescription("Requests with a sequence in the KV cache."))
	if err != nil {
		return nil, err
	}
	waiting, err := meter.Int64ObservableGauge("kvd_num_requests_waiting", metric.WithDescription("Requests waiting to be scheduled."))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(running, s.numRunning.Load())
		o.ObserveInt64(waiting, m.waiting.Load())
		return nil
	}, running, waiting)
	return m, err
}
