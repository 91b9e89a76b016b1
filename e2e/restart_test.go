package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestKVDRestart kills kvd under a running gateway, once between requests
// and once under a stream, and starts a new one on the same socket: the
// gateway reconnects, requests admitted afterwards run, and a request that
// was running is recomputed and still completes correctly; with async
// scheduling (the default: a step reserved on the old kvd must not run or
// be reported to the new one) and without.
func TestKVDRestart(t *testing.T) {
	for _, gw := range [][]string{nil, {"--async-scheduling=false"}} {
		t.Run(fmt.Sprint(gw), func(t *testing.T) { kvdRestart(t, gw) })
	}
}

// kvdRestart is TestKVDRestart with the gateway's extra flags gw.
func kvdRestart(t *testing.T, gw []string) {
	s := startStack(t, "sidecar", options{gateway: gw})
	prompt := []int32{5, 17, 99, 3, 250}
	want := refGreedy(t, prompt, 40)
	body := map[string]any{"prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": true, "logprobs": 0, "return_tokens_as_token_ids": true}

	restart := func() {
		kvd := s.cmds[0]
		kvd.Process.Signal(syscall.SIGKILL)
		kvd.Wait()
		cmd := exec.Command(filepath.Join(binDir, "kvd"), "serve", "--socket", s.sock, "--model", modelDir, "--kv-memory", "8MiB")
		cmd.Stdout, cmd.Stderr = s.logs[0], s.logs[0]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.cmds[0] = cmd
	}

	restart()
	if got := ids(t, s.complete(t, body).Choices[0].Logprobs.Tokens); !equal(got, want) {
		t.Fatalf("after a restart between requests: %v, want %v", got, want)
	}

	// Now under a stream: kill kvd after the first chunks arrive.
	stream, streamBody := s.openStream(t, map[string]any{"prompt": prompt, "max_tokens": 2000, "temperature": 0, "ignore_eos": true})
	defer streamBody.Close()
	restart()
	events := sseEvents(t, stream)
	last := events[len(events)-1]
	if ch, ok := last["choices"].([]any); !ok || len(ch) != 1 || ch[0].(map[string]any)["finish_reason"] != "length" {
		t.Fatalf("the stream across the restart ended with %v:\n%s", last, s.allLogs())
	}
	if got := ids(t, s.complete(t, body).Choices[0].Logprobs.Tokens); !equal(got, want) {
		t.Fatalf("after a restart under a stream: %v, want %v", got, want)
	}
	if n, async := s.counter(t, "kvd_steps_scheduled_ahead_total"), gw == nil; async != (n > 0) {
		t.Errorf("%v steps scheduled ahead with gateway flags %v (async scheduling expected: %v)", n, gw, async)
	}
}

func equal(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
