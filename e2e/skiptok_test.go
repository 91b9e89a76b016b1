package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSkipTokenizerInit serves the tiny model's weights without its
// tokenizer files, as GPU benchmarks serve a published config with dummy
// weights: token-id prompts generate the same ids as with the tokenizer,
// and everything that needs text says why it cannot.
func TestSkipTokenizerInit(t *testing.T) {
	dir := t.TempDir()
	entries, err := os.ReadDir(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tokenizer") || strings.HasPrefix(e.Name(), "chat_template") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(modelDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
	}
	// Without the flag, the gateway refuses and names it.
	out, err := exec.Command(filepath.Join(binDir, "gateway"), "--model", dir, "--embedded", "--listen", freeAddr(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--skip-tokenizer-init") {
		t.Fatalf("gateway on a model without tokenizer files: %v\n%s", err, out)
	}
	plain := startStack(t, "embedded", options{})
	bare := startStack(t, "embedded", options{model: dir, gateway: []string{"--skip-tokenizer-init"}})
	req := map[string]any{"prompt": []int{1, 17, 42, 99, 7}, "max_tokens": 12, "temperature": 0, "ignore_eos": true,
		"logprobs": 0, "return_tokens_as_token_ids": true}
	var ids [2][]string
	for i, s := range []*stack{plain, bare} {
		code, body, _ := s.post(t, "/v1/completions", req)
		if code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		var c completion
		if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) != 1 || c.Choices[0].Logprobs == nil {
			t.Fatalf("%v: %s", err, body)
		}
		ids[i] = c.Choices[0].Logprobs.Tokens
		if i == 1 && c.Choices[0].Text != "" {
			t.Errorf("text without a tokenizer: %q", c.Choices[0].Text)
		}
	}
	if strings.Join(ids[0], ",") != strings.Join(ids[1], ",") || len(ids[1]) != 12 {
		t.Errorf("generated ids with the tokenizer %v, without %v", ids[0], ids[1])
	}
	// A stream has one chunk per token (empty text), then the finish's:
	// a benchmark times tokens by their chunks.
	events := bare.stream(t, "/v1/completions", map[string]any{"prompt": []int{1, 17, 42}, "max_tokens": 9, "ignore_eos": true})
	if len(events) != 10 || events[9]["choices"].([]any)[0].(map[string]any)["finish_reason"] != "length" {
		t.Errorf("a stream of 9 tokens without a tokenizer sent %d chunks (want 9 and the finish): %v", len(events), events)
	}
	for _, c := range []struct{ path, body, want string }{
		{"/v1/completions", `{"prompt": "some text", "max_tokens": 4}`, "--skip-tokenizer-init"},
		{"/v1/completions", `{"prompt": [1, 2, 3], "max_tokens": 4, "stop": ["x"]}`, "stop strings need the tokenizer"},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}]}`, "without a tokenizer"},
	} {
		code, body, _ := bare.post(t, c.path, c.body)
		if code != 400 || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s: %d %s, want 400 saying %q", c.path, c.body, code, body, c.want)
		}
	}
}
