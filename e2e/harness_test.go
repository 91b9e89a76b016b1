package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/internal/proctest"
	"github.com/kvd-project/kvd/kernels"
)

var (
	binDir, modelDir string
	ref              *model.Model
	tok              *tokenizer.Tokenizer
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvd-e2e")
	if err != nil {
		panic(err)
	}
	binDir, modelDir = filepath.Join(dir, "bin"), filepath.Join(dir, "tiny")
	if prebuilt := os.Getenv("KVD_TEST_BIN_DIR"); prebuilt != "" {
		binDir = prebuilt // the GPU machine has no Go: binaries come built
	} else {
		build := exec.Command("go", "build", "-o", binDir+"/", "github.com/kvd-project/kvd/kvd", "github.com/kvd-project/kvd/gateway")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building binaries:", err)
			os.Exit(1)
		}
	}
	if err := tinymodel.Write(modelDir, tinymodel.Options{Seed: 1}); err != nil {
		panic(err)
	}
	if ref, err = model.Load(context.Background(), modelDir, kernels.NewCPU(), model.LoadOptions{}); err != nil {
		panic(err)
	}
	if tok, err = tokenizer.Load(modelDir); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack is a running gateway (and kvd, in sidecar mode).
type stack struct {
	mode string
	base string // http://host:port
	sock string // kvd's socket (sidecar)
	cmds []*exec.Cmd
	logs []*proctest.Buffer
	// gwArgs are the gateway's arguments, to start it again.
	gwArgs func() []string
}

// options for startStack.
type options struct {
	model    string   // model directory (default: the tiny model)
	kvMemory string   // pool size
	gateway  []string // extra gateway flags
	policy   []string // sparsity flags, for kvd (sidecar) or the gateway (embedded)
	kvd      []string // extra kvd flags (sidecar)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startStack(t *testing.T, mode string, o options) *stack {
	t.Helper()
	if o.kvMemory == "" {
		o.kvMemory = "8MiB"
	}
	if o.model == "" {
		o.model = modelDir
	}
	addr := freeAddr(t)
	s := &stack{mode: mode, base: "http://" + addr}
	start := func(name string, args ...string) {
		cmd := exec.Command(filepath.Join(binDir, name), args...)
		logs := &proctest.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s.cmds = append(s.cmds, cmd)
		s.logs = append(s.logs, logs)
	}
	gw := []string{"--model", o.model, "--listen", addr}
	s.gwArgs = func() []string { return append(append([]string(nil), gw...), o.gateway...) }
	switch mode {
	case "sidecar":
		s.sock = filepath.Join(t.TempDir(), "kvd.sock")
		start("kvd", append(append([]string{"serve", "--socket", s.sock, "--model", o.model, "--kv-memory", o.kvMemory, "--grace", "1s"}, o.policy...), o.kvd...)...)
		gw = append(gw, "--kvd-socket", s.sock)
	case "embedded":
		gw = append(append(gw, "--embedded", "--kv-memory", o.kvMemory), o.policy...)
	default:
		t.Fatalf("mode %q", mode)
	}
	start("gateway", append(gw, o.gateway...)...)
	t.Cleanup(s.stop)
	s.waitHealthy(t)
	return s
}

// waitHealthy waits for the gateway's /health to answer 200.
func (s *stack) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stack did not come up:\n%s", s.mode, s.allLogs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *stack) allLogs() string {
	var b strings.Builder
	for i, l := range s.logs {
		fmt.Fprintf(&b, "--- %s\n%s", s.cmds[i].Path, l.String())
	}
	return b.String()
}

// stop ends the gateway first (Ctrl-C), then kvd.
func (s *stack) stop() {
	for i := len(s.cmds) - 1; i >= 0; i-- {
		c := s.cmds[i]
		c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
}

// post sends JSON (a string is sent as is) and returns status and body.
func (s *stack) post(t *testing.T, path string, body any, header ...string) (int, []byte, http.Header) {
	t.Helper()
	var b []byte
	if str, ok := body.(string); ok {
		b = []byte(str)
	} else {
		var err error
		if b, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequest("POST", s.base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v\n%s", path, err, s.allLogs())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, resp.Header
}

// completion is the parts of a /v1/completions response the tests read.
type completion struct {
	Choices []struct {
		Index    int    `json:"index"`
		Text     string `json:"text"`
		Logprobs *struct {
			Tokens        []string             `json:"tokens"`
			TokenLogprobs []*float64           `json:"token_logprobs"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
		} `json:"logprobs"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func (s *stack) complete(t *testing.T, body map[string]any) completion {
	t.Helper()
	code, b, _ := s.post(t, "/v1/completions", body)
	if code != 200 {
		t.Fatalf("status %d: %s", code, b)
	}
	var c completion
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return c
}

// tokenKey is a token id's name with return_tokens_as_token_ids, as
// top_logprobs keys it (ids reads it back).
func tokenKey(id int32) string { return "token_id:" + strconv.Itoa(int(id)) }

// ids reads "token_id:N" names back into ids.
func ids(t *testing.T, names []string) []int32 {
	t.Helper()
	out := make([]int32, len(names))
	for i, n := range names {
		v, err := strconv.Atoi(strings.TrimPrefix(n, "token_id:"))
		if err != nil {
			t.Fatalf("token name %q", n)
		}
		out[i] = int32(v)
	}
	return out
}

// refGreedy is the no-cache reference's greedy continuation.
func refGreedy(t *testing.T, prompt []int32, n int) []int32 {
	t.Helper()
	seq := append([]int32(nil), prompt...)
	v := ref.Config.VocabSize
	for range n {
		lg, err := ref.Reference(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		last := lg[(len(seq)-1)*v:]
		best := 0
		for i, x := range last {
			if x > last[best] {
				best = i
			}
		}
		seq = append(seq, int32(best))
	}
	return seq[len(prompt):]
}

// refPromptLogprobs are log P(prompt[i] | prompt[:i]) for i >= 1.
func refPromptLogprobs(t *testing.T, prompt []int32) []float64 {
	t.Helper()
	lg, err := ref.Reference(context.Background(), prompt)
	if err != nil {
		t.Fatal(err)
	}
	v := ref.Config.VocabSize
	out := make([]float64, len(prompt)-1)
	for i := 1; i < len(prompt); i++ {
		row := lg[(i-1)*v : i*v]
		mx := math.Inf(-1)
		for _, x := range row {
			mx = math.Max(mx, float64(x))
		}
		var sum float64
		for _, x := range row {
			sum += math.Exp(float64(x) - mx)
		}
		out[i-1] = float64(row[prompt[i]]) - mx - math.Log(sum)
	}
	return out
}

// metric sums the samples of a Prometheus metric at /metrics.
func (s *stack) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		return math.NaN()
	}
	return sum
}

// samePrefix is how many tokens a and b agree on before they first differ.
func samePrefix(a, b []int32) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// counter is metric for a counter, which is not exported until it first
// counts: 0 where it is absent.
func (s *stack) counter(t *testing.T, name string) float64 {
	t.Helper()
	if v := s.metric(t, name); !math.IsNaN(v) {
		return v
	}
	return 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sseEvents reads a stream's data lines until [DONE].
func sseEvents(t *testing.T, r io.Reader) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("not an SSE data line: %q", line)
		}
		if data == "[DONE]" {
			return out
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(data), &m); err != nil {
			t.Fatalf("%v: %s", err, data)
		}
		out = append(out, m)
	}
	t.Fatal("stream ended without data: [DONE]")
	return nil
}

func (s *stack) stream(t *testing.T, path string, body map[string]any) []map[string]any {
	t.Helper()
	body["stream"] = true
	b, _ := json.Marshal(body)
	resp, err := http.Post(s.base+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		out, _ := io.ReadAll(resp.Body)
		t.Fatalf("stream: %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), out)
	}
	return sseEvents(t, resp.Body)
}

// openStream posts a streaming completion and returns its body once the
// first chunk has arrived (the request is running); the test closes it.
func (s *stack) openStream(t *testing.T, body map[string]any) (*bufio.Reader, io.Closer) {
	t.Helper()
	body["stream"] = true
	b, _ := json.Marshal(body)
	resp, err := http.Post(s.base+"/v1/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	stream := bufio.NewReader(resp.Body)
	if line, err := stream.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		resp.Body.Close()
		t.Fatalf("first line %q: %v", line, err)
	}
	return stream, resp.Body
}

var httpClient = http.DefaultClient

type tokenizerMessage = tokenizer.Message
