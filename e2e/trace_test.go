package e2e

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestOneTracePerRequest sends a request with a W3C traceparent to a
// sidecar stack whose processes export spans to the console, and checks
// that the gateway's spans and kvd's spans all join that trace.
func TestOneTracePerRequest(t *testing.T) {
	os.Setenv("OTEL_TRACES_EXPORTER", "console")
	defer os.Unsetenv("OTEL_TRACES_EXPORTER")
	s := startStack(t, "sidecar", options{})
	os.Unsetenv("OTEL_TRACES_EXPORTER")
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	code, b, _ := s.post(t, "/v1/completions", `{"prompt":"trace me","max_tokens":3}`, "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	kvdLog, gwLog := s.logs[0], s.logs[1]
	want := map[string][]string{
		"gateway": {"POST /v1/completions", "tokenize", "queue", "prefill", "decode", "detokenize"},
		"kvd":     {"kvd.open", "kvd.step", "kvd.close"},
	}
	waitFor(t, "every span in the trace", 10*time.Second, func() bool {
		for proc, names := range want {
			log := gwLog.String()
			if proc == "kvd" {
				log = kvdLog.String()
			}
			for _, n := range names {
				if !spanInTrace(log, n, traceID) {
					return false
				}
			}
		}
		return true
	})
}

// spanInTrace looks for a console-exported span of that name and trace id.
func spanInTrace(log, name, traceID string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"Name":"`+name+`"`) && strings.Contains(line, `"TraceID":"`+traceID+`"`) {
			return true
		}
	}
	return false
}
