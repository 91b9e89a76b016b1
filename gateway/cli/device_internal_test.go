package cli

import (
	"strings"
	"testing"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
)

// TestStepDefaults checks --max-num-batched-tokens' and --max-num-seqs'
// defaults by device, vLLM's for its server: 8192 tokens a step and 1024
// sequences on a GPU of 70 GiB or more but an A100, 2048 and 256 on
// smaller GPUs and the CPU.
func TestStepDefaults(t *testing.T) {
	if tokens, seqs := stepDefaults(kernels.NewCPU()); tokens != 2048 || seqs != 256 {
		t.Errorf("on the CPU: %d tokens, %d sequences; want 2048, 256", tokens, seqs)
	}
	for _, c := range []struct {
		name         string
		gib          uint64
		tokens, seqs int
	}{
		{"NVIDIA H200", 140, 8192, 1024},
		{"NVIDIA H100 80GB HBM3", 79, 8192, 1024},
		{"NVIDIA A100-SXM4-80GB", 79, 2048, 256},
		{"NVIDIA GeForce RTX 4090", 24, 2048, 256},
		{"NVIDIA L40S", 44, 2048, 256},
	} {
		if tokens, seqs := stepDefaultsOn(cuda.Device{Name: c.name, Memory: c.gib << 30}); tokens != c.tokens || seqs != c.seqs {
			t.Errorf("%s, %d GiB: %d tokens a step, %d sequences; want %d, %d", c.name, c.gib, tokens, seqs, c.tokens, c.seqs)
		}
	}
}

// TestLargestStep checks the activation bound a GPU's --kv-memory fraction
// and the sidecar's start-up check use: the largest step is a whole
// --max-model-len prompt (one that cannot be chunked runs at once) plus a
// token per running sequence, with a logit row per sequence.
func TestLargestStep(t *testing.T) {
	c, err := model.LoadConfig("../../bench/models/llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	s := largestStep(2048, 5564, 256)
	if s.tokens != 5564+256 || s.seqs != 256 {
		t.Fatalf("largest step %+v", s)
	}
	if s := largestStep(8192, 4096, 1); s.tokens != 8193 {
		t.Errorf("a budget above the context: %+v", s)
	}
	// Llama-3.1-8B: 3*4096 + 2*(4096+2*1024) + 3*14336 = 67584 floats a
	// token, 128256 a logit row; a sparse layer's bf16 K and V (1024 bf16
	// each, 1024 floats together), window sums (32 heads) and SnapKV's
	// choice's scratch (6 a KV head) a token, 4 bytes each, twice for
	// size classes, and the window's stats and the fused scoring logits
	// (64 MiB each at most, size classes already) and the fp8 pool's
	// widened blocks (256 MiB at most, twice for the size classes it moves
	// through), and the upload buffers (256 MiB held until the device
	// drains, 128 MiB kept idle).
	want := int64(2*4*(5820*(67584+1024+32+48)+256*128256) + 2*64<<20 + 2*256<<20 + 384<<20)
	if got := activationBytes(c, s); got != want {
		t.Errorf("activation bound %d, want %d", got, want)
	}
	// A 131072-token prompt's MLP tensors (7.5 GB each) get exact
	// allocations: counted once.
	long := largestStep(2048, 131072, 1)
	mlp := int64(4 * 131073 * 14336)
	small := int64(2 * 4 * 131073 * (3*4096 + 2*(4096+2*1024) + 1024 + 32 + 48))
	if got, want := activationBytes(c, long), 3*mlp+small+2*4*128256+2*64<<20+2*256<<20+384<<20; got != want {
		t.Errorf("activation bound of a 131072-token step %d, want %d", got, want)
	}
	if msg := s.String(); !strings.Contains(msg, "--max-model-len") {
		t.Errorf("the step's description does not name the flag to change: %s", msg)
	}
}
