package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var modes = []string{"sidecar", "embedded"}

// suiteStack is one stack TestSuite and TestPreemption run on.
type suiteStack struct {
	name, mode string
	gateway    []string // extra gateway flags
	async      bool     // steps are scheduled while the one before runs
}

// stacks names each stack TestSuite and TestPreemption run: every mode,
// whose gateway schedules each step while the one before runs (the
// default), then every mode with --async-scheduling=false (each step
// scheduled after the one before returns), whose outputs must not differ.
func stacks() []suiteStack {
	var out []suiteStack
	for _, m := range modes {
		out = append(out, suiteStack{m, m, nil, true})
	}
	for _, m := range modes {
		out = append(out, suiteStack{m + ", sync scheduling", m, []string{"--async-scheduling=false"}, false})
	}
	return out
}

func TestSuite(t *testing.T) {
	for _, st := range stacks() {
		t.Run(st.name, func(t *testing.T) {
			s := startStack(t, st.mode, options{gateway: st.gateway})
			t.Run("concurrent greedy equals reference", func(t *testing.T) { concurrentGreedy(t, s, 16, false) })
			t.Run("stream equals non-stream", func(t *testing.T) { streamEqualsNonStream(t, s) })
			t.Run("echo logprobs equal reference", func(t *testing.T) { echoLogprobs(t, s) })
			t.Run("chat", func(t *testing.T) { chat(t, s) })
			t.Run("score a continuation", func(t *testing.T) { scoreContinuation(t, s) })
			t.Run("stop strings", func(t *testing.T) { stopStrings(t, s) })
			t.Run("seeded sampling", func(t *testing.T) { seededSampling(t, s) })
			t.Run("disconnect frees blocks", func(t *testing.T) { disconnect(t, s, true) })
			t.Run("disconnect frees blocks, not streaming", func(t *testing.T) { disconnect(t, s, false) })
			t.Run("bad inputs", func(t *testing.T) { badInputs(t, s) })
			if n := s.counter(t, "kvd_steps_scheduled_ahead_total"); st.async != (n > 0) {
				t.Errorf("%v steps scheduled ahead with gateway flags %v (async scheduling: %v)", n, st.gateway, st.async)
			}
		})
	}
}

// TestPreemption gives the pool 39 blocks: 16 requests with short prompts,
// admitted while the pool has room, grow to need up to 16 blocks each, so
// some are preempted and recomputed; every one must still equal the
// reference.
func TestPreemption(t *testing.T) {
	for _, st := range stacks() {
		t.Run(st.name, func(t *testing.T) {
			s := startStack(t, st.mode, options{kvMemory: "168960B", gateway: st.gateway}) // 40 blocks of 4224 bytes
			concurrentGreedy(t, s, 16, true)
			if n := s.metric(t, "kvd_num_preemptions_total"); !(n > 0) {
				t.Errorf("no preemption happened (kvd_num_preemptions_total %v); the test does not test it", n)
			}
		})
	}
}

func randomPrompt(rng *rand.Rand, n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(rng.IntN(ref.Config.VocabSize - 8)) // no special tokens
	}
	return p
}

// concurrentGreedy sends n greedy requests of different lengths at once;
// grow makes them short prompts with long generations.
func concurrentGreedy(t *testing.T, s *stack, n int, grow bool) {
	rng := rand.New(rand.NewPCG(uint64(n), 99))
	var wg sync.WaitGroup
	errs := make(chan string, 3*n) // up to three complaints a request
	for i := range n {
		prompt := randomPrompt(rng, 3+i*3)
		maxTokens := 8 + i%5*4
		if grow {
			prompt, maxTokens = randomPrompt(rng, 3+i), 40+i
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.complete(t, map[string]any{
				"prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "ignore_eos": true,
				"logprobs": 0, "return_tokens_as_token_ids": true,
			})
			got := ids(t, c.Choices[0].Logprobs.Tokens)
			want := refGreedy(t, prompt, maxTokens)
			if !slices.Equal(got, want) {
				errs <- fmt.Sprintf("request %d (%d prompt tokens): got %v, reference %v", i, len(prompt), got, want)
			}
			if c.Usage.PromptTokens != len(prompt) || c.Usage.CompletionTokens != maxTokens || c.Choices[0].FinishReason != "length" {
				errs <- fmt.Sprintf("request %d: usage %+v, finish %q", i, c.Usage, c.Choices[0].FinishReason)
			}
			if c.Choices[0].Text != tok.Decode(toInts(want), true) {
				errs <- fmt.Sprintf("request %d: text %q, reference decodes to %q", i, c.Choices[0].Text, tok.Decode(toInts(want), true))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func toInts(ids []int32) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

func streamEqualsNonStream(t *testing.T, s *stack) {
	for _, prompt := range []any{"The key-value cache", []string{"Le cache 🙂", "func main() {"}} {
		body := func() map[string]any {
			return map[string]any{"prompt": prompt, "max_tokens": 20, "temperature": 0, "ignore_eos": true}
		}
		c := s.complete(t, body())
		b := body()
		b["stream_options"] = map[string]any{"include_usage": true}
		events := s.stream(t, "/v1/completions", b)
		texts := make([]string, len(c.Choices))
		finish := make([]string, len(c.Choices))
		var usage map[string]any
		for _, e := range events {
			if e["object"] != "text_completion" {
				t.Fatalf("chunk object %v", e["object"])
			}
			if u, ok := e["usage"].(map[string]any); ok {
				usage = u
				continue
			}
			for _, ch := range e["choices"].([]any) {
				ch := ch.(map[string]any)
				i := int(ch["index"].(float64))
				texts[i] += ch["text"].(string)
				if f, ok := ch["finish_reason"].(string); ok {
					finish[i] = f
				}
			}
		}
		for i := range c.Choices {
			if texts[i] != c.Choices[i].Text || finish[i] != c.Choices[i].FinishReason {
				t.Errorf("prompt %v choice %d: stream %q (%s), non-stream %q (%s)", prompt, i, texts[i], finish[i], c.Choices[i].Text, c.Choices[i].FinishReason)
			}
		}
		if usage == nil || int(usage["completion_tokens"].(float64)) != c.Usage.CompletionTokens || int(usage["prompt_tokens"].(float64)) != c.Usage.PromptTokens {
			t.Errorf("stream usage %v, non-stream %+v", usage, c.Usage)
		}
		if last := events[len(events)-1]; len(last["choices"].([]any)) != 0 {
			t.Errorf("the usage chunk must come last with no choices: %v", last)
		}
	}
}

func echoLogprobs(t *testing.T, s *stack) {
	prompt := randomPrompt(rand.New(rand.NewPCG(5, 5)), 37)
	c := s.complete(t, map[string]any{"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 3, "return_tokens_as_token_ids": true})
	lp := c.Choices[0].Logprobs
	if !slices.Equal(ids(t, lp.Tokens), prompt) {
		t.Fatalf("echoed tokens %v, prompt %v", lp.Tokens, prompt)
	}
	if lp.TokenLogprobs[0] != nil {
		t.Errorf("the first prompt token has no logprob, got %v", *lp.TokenLogprobs[0])
	}
	want := refPromptLogprobs(t, prompt)
	for i, w := range want {
		got := lp.TokenLogprobs[i+1]
		if got == nil || math.Abs(*got-w) > 1e-4 {
			t.Fatalf("prompt token %d: logprob %v, reference %.6f", i+1, got, w)
		}
	}
	if c.Choices[0].Text != tok.Decode(toInts(prompt), true) || c.Usage.CompletionTokens != 0 {
		t.Errorf("echo text %q, usage %+v", c.Choices[0].Text, c.Usage)
	}
	// Streamed, a one-token prompt is still echoed, and no chunk carries
	// empty logprob arrays.
	events := s.stream(t, "/v1/completions", map[string]any{"prompt": []int32{65}, "echo": true, "logprobs": 1, "max_tokens": 2, "temperature": 0, "ignore_eos": true})
	var text string
	for _, e := range events {
		ch := e["choices"].([]any)[0].(map[string]any)
		text += ch["text"].(string)
		if lp, ok := ch["logprobs"].(map[string]any); ok && lp["tokens"] == nil {
			t.Errorf("a chunk with null logprob tokens: %v", ch)
		}
	}
	if prompt := tok.Decode([]int{65}, true); !strings.HasPrefix(text, prompt) {
		t.Errorf("streamed echo %q does not start with the prompt %q", text, prompt)
	}
	// With generation too: prompt scores, then the generated tokens'.
	c = s.complete(t, map[string]any{"prompt": prompt, "max_tokens": 4, "echo": true, "logprobs": 1, "temperature": 0, "ignore_eos": true, "return_tokens_as_token_ids": true})
	got := ids(t, c.Choices[0].Logprobs.Tokens)
	if !slices.Equal(got[:len(prompt)], prompt) || !slices.Equal(got[len(prompt):], refGreedy(t, prompt, 4)) {
		t.Errorf("echo + generation tokens %v", got)
	}
}

// seededSampling: a seed repeats a sampled completion, with or without
// logprobs (the draw does not depend on them), other seeds give others, and
// the logprob reported is the drawn token's.
func seededSampling(t *testing.T, s *stack) {
	prompt := randomPrompt(rand.New(rand.NewPCG(9, 9)), 20)
	body := func(seed int, logprobs bool) map[string]any {
		b := map[string]any{"prompt": prompt, "max_tokens": 24, "temperature": 1.5, "top_p": 0.95, "top_k": 100, "seed": seed, "ignore_eos": true, "return_tokens_as_token_ids": true}
		if logprobs {
			b["logprobs"] = 2
		}
		return b
	}
	a := s.complete(t, body(7, false)).Choices[0].Text
	if b := s.complete(t, body(7, false)).Choices[0].Text; a != b {
		t.Errorf("seed 7 twice: %q then %q", a, b)
	}
	lp := s.complete(t, body(7, true))
	if lp.Choices[0].Text != a {
		t.Errorf("seed 7 with logprobs gave %q, without %q", lp.Choices[0].Text, a)
	}
	for i, l := range lp.Choices[0].Logprobs.TokenLogprobs {
		if l == nil || *l > 0 || math.IsInf(*l, 0) {
			t.Errorf("token %d: logprob %v", i, l)
		}
	}
	differ := 0
	for seed := 8; seed < 12; seed++ {
		if s.complete(t, body(seed, false)).Choices[0].Text != a {
			differ++
		}
	}
	if differ == 0 {
		t.Error("seeds 8-11 all repeated seed 7's completion at temperature 1.5")
	}
}

func chat(t *testing.T, s *stack) {
	body := map[string]any{
		"messages":    []map[string]any{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a KV cache?"}},
		"max_tokens":  12,
		"temperature": 0,
		"ignore_eos":  true,
	}
	code, b, _ := s.post(t, "/v1/chat/completions", body)
	if code != 200 {
		t.Fatalf("%d: %s", code, b)
	}
	var c struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct{ Role, Content string } `json:"message"`
			Finish  string                         `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	// The reference: the same template and tokenizer in process.
	msgs := renderChat(t)
	want := tok.Decode(toInts(refGreedy(t, msgs, 12)), true)
	if c.Object != "chat.completion" || c.Choices[0].Message.Role != "assistant" || c.Choices[0].Message.Content != want || c.Usage.PromptTokens != len(msgs) {
		t.Errorf("chat: %+v, want content %q and %d prompt tokens", c, want, len(msgs))
	}
	events := s.stream(t, "/v1/chat/completions", body)
	var text string
	for i, e := range events {
		if e["object"] != "chat.completion.chunk" {
			t.Fatalf("chunk object %v", e["object"])
		}
		delta := e["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)
		if i == 0 && delta["role"] != "assistant" {
			t.Errorf("first chunk must carry the role: %v", delta)
		}
		if s, ok := delta["content"].(string); ok {
			text += s
		}
	}
	if text != want {
		t.Errorf("streamed chat %q, non-stream %q", text, want)
	}
}

func renderChat(t *testing.T) []int32 {
	t.Helper()
	text, err := tok.ApplyChatTemplate([]tokenizerMessage{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "What is a KV cache?"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := tok.Encode(text, false)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}

func stopStrings(t *testing.T, s *stack) {
	full := s.complete(t, map[string]any{"prompt": "The key-value cache", "max_tokens": 30, "temperature": 0, "ignore_eos": true}).Choices[0].Text
	// Stop at a piece of text that occurs in the middle of the greedy output.
	runes := []rune(full)
	if len(runes) < 10 {
		t.Skipf("output too short to cut: %q", full)
	}
	stop := string(runes[len(runes)/2 : len(runes)/2+2])
	want := full[:strings.Index(full, stop)]
	c := s.complete(t, map[string]any{"prompt": "The key-value cache", "max_tokens": 30, "temperature": 0, "ignore_eos": true, "stop": []string{"\x00never", stop}})
	if c.Choices[0].Text != want || c.Choices[0].FinishReason != "stop" {
		t.Errorf("stop %q: got %q (%s), want %q", stop, c.Choices[0].Text, c.Choices[0].FinishReason, want)
	}
	events := s.stream(t, "/v1/completions", map[string]any{"prompt": "The key-value cache", "max_tokens": 30, "temperature": 0, "ignore_eos": true, "stop": stop})
	var text string
	for _, e := range events {
		for _, ch := range e["choices"].([]any) {
			text += ch.(map[string]any)["text"].(string)
		}
	}
	if text != want {
		t.Errorf("streamed with stop %q: %q, want %q", stop, text, want)
	}
}

// disconnect starts a long generation, streamed (and read for two chunks)
// or not (which writes nothing until done), hangs up, and checks that the
// request's KV blocks come back.
func disconnect(t *testing.T, s *stack, stream bool) {
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	const maxTokens = 4000
	before := s.metric(t, "kvd_generation_tokens_total")
	body := fmt.Sprintf(`{"prompt":"The key-value cache","max_tokens":%d,"ignore_eos":true,"stream":%v}`, maxTokens, stream)
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if stream {
		r := bufio.NewReader(conn)
		chunks := 0
		for chunks < 2 {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(line, "data: ") {
				chunks++
			}
		}
	} else {
		waitFor(t, "the request running", 10*time.Second, func() bool {
			return s.metric(t, "kvd_num_requests_running") == 1
		})
	}
	if used := s.metric(t, "kvd_kv_blocks_used"); !(used > 0) {
		t.Fatalf("blocks used during the stream: %v", used)
	}
	conn.Close()
	waitFor(t, "blocks back after the disconnect", 10*time.Second, func() bool {
		return s.metric(t, "kvd_kv_blocks_used") == 0 && s.metric(t, "kvd_num_requests_running") == 0
	})
	// Cut short, not run to the end with no one to read it.
	if n := s.metric(t, "kvd_generation_tokens_total") - before; n >= maxTokens {
		t.Errorf("the abandoned request generated %v tokens: all of them", n)
	}
	if s.mode == "sidecar" {
		out, err := exec.Command(filepath.Join(binDir, "kvd"), "status", "--socket", s.sock, "--json").Output()
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			BlocksUsed  int `json:"blocks_used"`
			BlocksFree  int `json:"blocks_free"`
			BlocksTotal int `json:"blocks_total"`
			Sequences   int `json:"sequences"`
		}
		json.Unmarshal(out, &st)
		if st.BlocksUsed != 0 || st.BlocksFree != st.BlocksTotal || st.Sequences != 0 {
			t.Errorf("kvd status after the disconnect: %s", out)
		}
	}
}

func badInputs(t *testing.T, s *stack) {
	long := strings.Repeat("word ", 5000)
	cases := []struct {
		name   string
		path   string
		body   string
		status int
		param  string
	}{
		{"malformed JSON", "/v1/completions", `{"prompt": "x",`, 400, ""},
		{"empty body", "/v1/completions", ``, 400, ""},
		{"not an object", "/v1/completions", `[1,2]`, 400, ""},
		{"prompt of wrong type", "/v1/completions", `{"prompt": {"a": 1}}`, 400, "prompt"},
		{"max_tokens of wrong type", "/v1/completions", `{"prompt": "x", "max_tokens": "ten"}`, 400, "max_tokens"},
		{"unknown model", "/v1/completions", `{"model": "gpt-9", "prompt": "x"}`, 400, "model"},
		{"prompt beyond context", "/v1/completions", `{"prompt": "` + long + `"}`, 400, "max_tokens"},
		{"max_tokens beyond context", "/v1/completions", `{"prompt": "x", "max_tokens": 100000}`, 400, "max_tokens"},
		{"negative max_tokens", "/v1/completions", `{"prompt": "x", "max_tokens": -1}`, 400, "max_tokens"},
		{"n > 1", "/v1/completions", `{"prompt": "x", "n": 2}`, 400, "n"},
		{"token outside vocabulary", "/v1/completions", `{"prompt": [1, 99999999]}`, 400, "prompt"},
		{"empty prompt list", "/v1/completions", `{"prompt": []}`, 400, "prompt"},
		{"temperature out of range", "/v1/completions", `{"prompt": "x", "temperature": 7}`, 400, "temperature"},
		{"logprobs too many", "/v1/completions", `{"prompt": "x", "logprobs": 99}`, 400, "logprobs"},
		{"too many stops", "/v1/completions", `{"prompt": "x", "stop": ["a","b","c","d","e"]}`, 400, "stop"},
		{"max_tokens 0 without echo", "/v1/completions", `{"prompt": "x", "max_tokens": 0}`, 400, "max_tokens"},
		{"chat without messages", "/v1/chat/completions", `{"messages": []}`, 400, "messages"},
		{"chat bad role", "/v1/chat/completions", `{"messages": [{"role": "robot", "content": "x"}]}`, 400, "messages"},
		{"chat content of wrong type", "/v1/chat/completions", `{"messages": [{"role": "user", "content": 5}]}`, 400, "messages"},
		{"chat image part", "/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}`, 400, "messages"},
		{"unknown route", "/v1/embeddings", `{}`, 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, b, _ := s.post(t, tc.path, tc.body)
			var e struct {
				Error *struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			if code != tc.status || json.Unmarshal(b, &e) != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("status %d (want %d), body %s", code, tc.status, b)
			}
			if tc.param != "" && (e.Error.Param == nil || *e.Error.Param != tc.param) {
				t.Errorf("param %v, want %q: %s", e.Error.Param, tc.param, b)
			}
		})
	}
	// GET on a POST route.
	resp, err := httpGet(s.base + "/v1/completions")
	if err != nil || resp != 405 {
		t.Errorf("GET /v1/completions: %d %v", resp, err)
	}
	// Still serving.
	c := s.complete(t, map[string]any{"prompt": "still here", "max_tokens": 3})
	if c.Usage.CompletionTokens == 0 {
		t.Error("no tokens after the bad inputs")
	}
	for _, l := range s.logs {
		if strings.Contains(l.String(), "panic") {
			t.Fatalf("a process panicked:\n%s", s.allLogs())
		}
	}
}

func TestAPIKey(t *testing.T) {
	s := startStack(t, "embedded", options{gateway: []string{"--api-key", "sekret"}})
	if code, b, _ := s.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`); code != 401 || !strings.Contains(string(b), `"error"`) {
		t.Errorf("no key: %d %s", code, b)
	}
	if code, _, _ := s.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`, "Authorization", "Bearer wrong"); code != 401 {
		t.Errorf("wrong key: %d", code)
	}
	if code, b, _ := s.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`, "Authorization", "Bearer sekret"); code != 200 {
		t.Errorf("right key: %d %s", code, b)
	}
	if code, err := httpGet(s.base + "/health"); code != 200 || err != nil {
		t.Errorf("/health must stay open: %d %v", code, err)
	}
}

// TestQueueFull fills the one running slot and the one queue place; the
// next request gets 503 with Retry-After, and the server keeps serving.
func TestQueueFull(t *testing.T) {
	s := startStack(t, "embedded", options{gateway: []string{"--max-num-seqs", "1", "--max-queue-len", "1"}})
	long := map[string]any{"prompt": "x", "max_tokens": 3000, "ignore_eos": true}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); s.post(t, "/v1/completions", long) }()
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, "one running and one waiting", 10*time.Second, func() bool {
		return s.metric(t, "kvd_num_requests_running") == 1 && s.metric(t, "kvd_num_requests_waiting") == 1
	})
	code, b, h := s.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`)
	if code != 503 || h.Get("Retry-After") == "" || !strings.Contains(string(b), "queue is full") {
		t.Errorf("queue full: %d, Retry-After %q, %s", code, h.Get("Retry-After"), b)
	}
	wg.Wait()
	if c := s.complete(t, map[string]any{"prompt": "x", "max_tokens": 2}); c.Usage.CompletionTokens == 0 {
		t.Error("not serving after the queue drained")
	}
}

func httpGet(url string) (int, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// scoreContinuation checks POST /v1/kvd/score against the reference: with
// full KV, each continuation token's log-probability is the no-cache
// forward pass's.
func scoreContinuation(t *testing.T, s *stack) {
	rng := rand.New(rand.NewPCG(21, 21))
	prompt, cont := randomPrompt(rng, 29), randomPrompt(rng, 11)
	code, b, _ := s.post(t, "/v1/kvd/score", map[string]any{"prompt": prompt, "continuation": cont, "top_logprobs": 2})
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var r struct {
		Object string `json:"object"`
		Tokens []struct {
			Token   int32   `json:"token"`
			Logprob float64 `json:"logprob"`
			Top     []any   `json:"top_logprobs"`
		} `json:"tokens"`
		Sum       float64 `json:"sum_logprob"`
		PromptLen int     `json:"prompt_tokens"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	want := refPromptLogprobs(t, append(append([]int32(nil), prompt...), cont...))[len(prompt)-1:]
	if r.Object != "kvd.score" || len(r.Tokens) != len(cont) || r.PromptLen != len(prompt) {
		t.Fatalf("%s", b)
	}
	var sum float64
	for i, tk := range r.Tokens {
		if tk.Token != cont[i] || math.Abs(tk.Logprob-want[i]) > 1e-4 || len(tk.Top) != 2 {
			t.Fatalf("token %d: %+v, reference logprob %.6f", i, tk, want[i])
		}
		sum += tk.Logprob
	}
	if math.Abs(sum-r.Sum) > 1e-3 {
		t.Errorf("sum_logprob %v, tokens add to %v", r.Sum, sum)
	}
	if code, b, _ := s.post(t, "/v1/kvd/score", map[string]any{"prompt": prompt, "continuation": []int32{}}); code != 400 {
		t.Errorf("empty continuation: %d %s", code, b)
	}
}

// TestLongPromptJoinsDecodes sends a prompt longer than
// --max-num-batched-tokens while another request decodes, with chunked
// prefill off (as for a sparse model): it is admitted into the running
// batch whole, past the budget, and finishes while the first request still
// streams, rather than waiting for the batch to drain.
func TestLongPromptJoinsDecodes(t *testing.T) {
	s := startStack(t, "embedded", options{gateway: []string{"--max-num-batched-tokens", "16", "--enable-chunked-prefill=false"}})
	rng := rand.New(rand.NewPCG(3, 3))
	_, body := s.openStream(t, map[string]any{"prompt": randomPrompt(rng, 40), "max_tokens": 1500, "ignore_eos": true})
	defer body.Close()
	c := s.complete(t, map[string]any{"prompt": randomPrompt(rng, 40), "max_tokens": 4, "ignore_eos": true})
	if c.Usage.CompletionTokens != 4 {
		t.Fatalf("the long prompt's request: %+v", c)
	}
	// The first request is still going: it has most of its 1500 tokens
	// left (a step is about a millisecond here; draining it first would
	// have taken all of them).
	if got := s.metric(t, "kvd_num_requests_running"); got != 1 {
		t.Errorf("after the second request, %v requests running, want the first still running", got)
	}
}

// TestChunkedPrefill prefills a 100-token prompt in steps of
// --max-num-batched-tokens 16 and checks that the completion equals the
// no-cache reference's (each chunk attends over the ones before it in
// kvd's pool) and that kvd saw seven prompt steps; a sparse model, whose
// SnapKV layers need the prompt at once, prefills it in one step, and its
// gateway says async scheduling is off (at info level by default, as a
// warning when --async-scheduling was given).
func TestChunkedPrefill(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	prompt := randomPrompt(rng, 100)
	want := refGreedy(t, prompt, 6)
	body := map[string]any{"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": 0, "return_tokens_as_token_ids": true}
	sparse := []string{"--sparse-layers", "2", "--window", "64"}
	for _, c := range []struct {
		name   string
		policy []string
		gw     []string
		steps  int
		offLog string // how the gateway says async scheduling is off ("": it does not)
	}{
		{"full", nil, nil, 7 + 5, ""},
		// A sparse model cannot schedule ahead: the gateway says so
		// quietly where that is the default, and warns where it was asked for.
		{"sparse", sparse, nil, 1 + 5, "level=INFO"},
		{"sparse, --async-scheduling", sparse, []string{"--async-scheduling"}, 1 + 5, "level=WARN"},
	} {
		s := startStack(t, "sidecar", options{policy: c.policy, gateway: append([]string{"--max-num-batched-tokens", "16"}, c.gw...)})
		got := ids(t, s.complete(t, body).Choices[0].Logprobs.Tokens)
		if c.policy == nil && !equal(got, want) {
			t.Errorf("chunked prefill gave %v, the reference %v", got, want)
		}
		if st := kvdStatus(t, s); st.Steps != uint64(c.steps) {
			t.Errorf("%s: kvd saw %d steps for a 100-token prompt in chunks of 16 and 6 tokens, want %d", c.name, st.Steps, c.steps)
		}
		logs := s.allLogs()
		said := strings.Contains(logs, "async scheduling is off")
		if c.offLog == "" && said || c.offLog != "" && !strings.Contains(logs, c.offLog+` msg="async scheduling is off`) {
			t.Errorf("%s: want the gateway to say async scheduling is off %q; logs:\n%s", c.name, c.offLog, logs)
		}
		s.stop()
	}
	// Many at once: chunks of several prompts (3 to 48 tokens) interleave
	// with other requests' decodes, each still the reference's.
	for _, mode := range modes {
		concurrentGreedy(t, startStack(t, mode, options{gateway: []string{"--max-num-batched-tokens", "16"}}), 16, false)
	}
}

// TestPromptLargerThanPool sends a prompt whose KV could never fit the
// pool: it fails at once with an error that says so, and no chunk of it is
// computed (kvd saw no step).
func TestPromptLargerThanPool(t *testing.T) {
	s := startStack(t, "sidecar", options{kvMemory: "256KiB", gateway: []string{"--max-num-batched-tokens", "16"}})
	rng := rand.New(rand.NewPCG(6, 6))
	code, b, _ := s.post(t, "/v1/completions", map[string]any{"prompt": randomPrompt(rng, 400), "max_tokens": 4})
	if code < 400 || !strings.Contains(string(b), "more KV cache than the pool holds") {
		t.Errorf("a prompt larger than the pool: %d %s", code, b)
	}
	if st := kvdStatus(t, s); st.Steps != 0 {
		t.Errorf("kvd saw %d steps of a prompt that could never fit", st.Steps)
	}
	if c := s.complete(t, map[string]any{"prompt": randomPrompt(rng, 8), "max_tokens": 2}); c.Usage.CompletionTokens != 2 {
		t.Errorf("not serving after it: %+v", c)
	}
}
