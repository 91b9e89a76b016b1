package cli_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/kernels"
)

var bin, modelDir string

// TestMain builds the real binaries once and writes the tiny model.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gateway-cli")
	if err != nil {
		panic(err)
	}
	bin, modelDir = filepath.Join(dir, "bin"), filepath.Join(dir, "tiny")
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/kvd-project/kvd/gateway", "github.com/kvd-project/kvd/kvd")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	if err := tinymodel.Write(modelDir, tinymodel.Options{Seed: 1}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestGenerate(t *testing.T) {
	args := []string{"generate", "--model", modelDir, "--prompt", "The key-value cache", "--max-tokens", "12", "--ignore-eos"}
	out1, log1, code := run(t, "gateway", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, log1)
	}
	if !strings.Contains(log1, "completion_tokens=12") || !strings.Contains(log1, "backend=cpu") {
		t.Errorf("log does not report 12 tokens on the cpu backend:\n%s", log1)
	}
	if strings.TrimSpace(out1) == "" {
		t.Error("no text generated")
	}
	out2, _, _ := run(t, "gateway", args...)
	if out1 != out2 {
		t.Errorf("greedy output differs between runs: %q vs %q", out1, out2)
	}
	_, log3, code := run(t, "gateway", "generate", "--model", modelDir, "--prompt", "hello", "--chat", "--max-tokens", "3")
	if code != 0 || !regexp.MustCompile(`prompt_tokens=\d+`).MatchString(log3) {
		t.Errorf("chat: exit %d\n%s", code, log3)
	}
	_, log4, code := run(t, "gateway", "generate", "--model", modelDir, "--load-format", "dummy", "--prompt", "x", "--max-tokens", "2", "--ignore-eos")
	if code != 0 || !strings.Contains(log4, "completion_tokens=2") {
		t.Errorf("dummy weights: exit %d\n%s", code, log4)
	}
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name    string
		prog    string
		args    []string
		code    int
		message string
	}{
		{"no command", "gateway", nil, 2, "no command"},
		{"unknown command", "gateway", []string{"serve-me"}, 2, `unknown command "serve-me"`},
		{"no model", "gateway", []string{"generate", "--prompt", "x"}, 2, "--model is required"},
		{"no prompt", "gateway", []string{"generate", "--model", modelDir}, 2, "--prompt is required"},
		{"bad flag", "gateway", []string{"generate", "--nope"}, 2, "flag provided but not defined"},
		{"zero max tokens", "gateway", []string{"generate", "--model", modelDir, "--prompt", "x", "--max-tokens", "0"}, 2, "--max-tokens"},
		{"missing model dir", "gateway", []string{"generate", "--model", "/nonexistent", "--prompt", "x"}, 1, "/nonexistent"},
		{"bad load format", "gateway", []string{"generate", "--model", modelDir, "--prompt", "x", "--load-format", "pt"}, 1, `load format "pt"`},
		{"prompt beyond context", "gateway", []string{"generate", "--model", modelDir, "--prompt", strings.Repeat("word ", 50), "--max-model-len", "16"}, 2, "exceeds --max-model-len 16"},
		{"negative step budget", "gateway", []string{"serve", "--model", modelDir, "--max-num-batched-tokens", "-1"}, 2, "--max-num-batched-tokens -1: give a positive number of tokens a step, or 0 for the default"},
		{"negative places", "gateway", []string{"serve", "--model", modelDir, "--max-num-seqs", "-2"}, 2, "--max-num-seqs -2: give a positive number of sequences, or 0 for the default"},
		{"bad device", "gateway", []string{"generate", "--model", modelDir, "--prompt", "x", "--device", "tpu"}, 2, `--device "tpu": want auto, cpu or cuda`},
		{"kvd bad device", "kvd", []string{"serve", "--model", modelDir, "--device", "tpu"}, 2, `--device "tpu": want auto, cpu or cuda`},
		{"sidecar bad device", "gateway", []string{"serve", "--model", modelDir, "--device", "tpu"}, 2, `--device "tpu": want auto, cpu or cuda`},
		{"kvd no command", "kvd", nil, 2, "no command"},
		{"kvd bad size", "kvd", []string{"layout", "--model", modelDir, "--kv-memory", "lots"}, 2, "--kv-memory"},
		{"kvd too small", "kvd", []string{"layout", "--model", modelDir, "--kv-memory", "1KiB"}, 1, "invalid pool layout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, tc.prog, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.message) {
				t.Errorf("exit %d (want %d), stderr:\n%s\nwant it to contain %q", code, tc.code, stderr, tc.message)
			}
			if strings.Contains(stderr, "panic") {
				t.Errorf("panicked:\n%s", stderr)
			}
		})
	}
}

// TestNoGPU: where there is no GPU, --device auto takes the CPU and says
// why, and --device cuda stops with what is missing.
func TestNoGPU(t *testing.T) {
	if g, err := kernels.NewCUDA(0); err == nil {
		g.Close()
		t.Skip("this machine has a GPU")
	}
	args := []string{"generate", "--model", modelDir, "--prompt", "x", "--max-tokens", "2"}
	_, log, code := run(t, "gateway", args...)
	if code != 0 || !strings.Contains(log, "backend=cpu") || !strings.Contains(log, "no GPU") {
		t.Errorf("--device auto: exit %d, log:\n%s", code, log)
	}
	_, log, code = run(t, "gateway", append(args, "--device", "cuda")...)
	if code != 1 || !strings.Contains(log, "--device cuda: no usable CUDA driver") || !strings.Contains(log, "--device cpu") {
		t.Errorf("--device cuda: exit %d, log:\n%s", code, log)
	}
	_, log, code = run(t, "kvd", "serve", "--model", modelDir, "--socket", filepath.Join(t.TempDir(), "k.sock"), "--device", "cuda")
	if code != 1 || !strings.Contains(log, "--device cuda: no usable CUDA driver") || !strings.Contains(log, "--device cpu") {
		t.Errorf("kvd --device cuda: exit %d, log:\n%s", code, log)
	}
}

func TestKVDLayout(t *testing.T) {
	out, stderr, code := run(t, "kvd", "layout", "--model", modelDir, "--kv-memory", "1MiB", "--block-size", "16")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// tiny model: 2 KV heads × 16 dims × 16 tokens × (K+V) + 2×16 scores = 1056 floats = 4224 bytes.
	for _, want := range []string{"bytes per block 4224", "blocks          248", "layers          4"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// TestGenerateThroughKVD runs the model with its KV cache in a real kvd
// process (the pool is a memfd shared over the socket) and checks that the
// output equals the embedded mode's, and that kvd got its blocks back.
func TestGenerateThroughKVD(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "kvd.sock")
	kvd := exec.Command(filepath.Join(bin, "kvd"), "serve", "--socket", sock, "--model", modelDir, "--kv-memory", "2MiB", "--device", "cpu")
	var kvdLog bytes.Buffer
	kvd.Stderr = &kvdLog
	if err := kvd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { kvd.Process.Signal(os.Interrupt); kvd.Wait() }()
	args := []string{"generate", "--model", modelDir, "--prompt", "Le cache garde les clés 🙂", "--max-tokens", "20", "--ignore-eos"}
	embedded, elog, code := run(t, "gateway", append(args, "--device", "cpu")...)
	if code != 0 {
		t.Fatalf("embedded: %s", elog)
	}
	sidecar, slog, code := run(t, "gateway", append(args, "--kvd-socket", sock)...)
	if code != 0 {
		t.Fatalf("sidecar: exit %d\n%s\nkvd:\n%s", code, slog, kvdLog.String())
	}
	if sidecar != embedded {
		t.Errorf("sidecar output %q differs from embedded %q", sidecar, embedded)
	}
	if !strings.Contains(slog, "using kvd") || !strings.Contains(slog, "backend=cpu") {
		t.Errorf("sidecar run did not use kvd's host pool from the CPU:\n%s", slog)
	}
	// A GPU gateway cannot address a host pool: it says what to change.
	_, glog, code := run(t, "gateway", append(args, "--kvd-socket", sock, "--device", "cuda")...)
	if code != 2 || !strings.Contains(glog, "kvd's pool is host memory (memfd); start kvd with --device cuda") {
		t.Errorf("--device cuda on a host pool: exit %d\n%s", code, glog)
	}
	out, stderr, code := run(t, "kvd", "status", "--socket", sock, "--json")
	if code != 0 {
		t.Fatal(stderr)
	}
	var s struct {
		BlocksUsed, BlocksTotal, BlocksFree int
		Steps                               int
	}
	if err := jsonUnmarshalSnake(out, &s); err != nil {
		t.Fatal(err)
	}
	// Prefill plus 19 decode steps, each reported done; the sequence was
	// closed.
	if s.Steps != 20 || s.BlocksUsed != 0 || s.BlocksFree != s.BlocksTotal {
		t.Errorf("kvd after the run: %+v", s)
	}
	_, errOut, code := run(t, "gateway", "generate", "--model", modelDir, "--prompt", "x", "--kvd-socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(errOut, "kvd is not running") {
		t.Errorf("no kvd: exit %d\n%s", code, errOut)
	}
}

func jsonUnmarshalSnake(s string, v any) error {
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return err
	}
	camel := map[string]any{}
	for k, x := range m {
		camel[strings.ReplaceAll(k, "_", "")] = x
	}
	b, _ := json.Marshal(camel)
	return json.Unmarshal(b, v)
}
