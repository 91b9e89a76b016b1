package api_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kvd/blocks"
)

// BenchmarkStepRoundTrip measures one decode step's control-plane cost
// against a real kvd process: 64 sequences, each adding a token in all 32
// layers (Llama-3.1-8B's depth), with 128 tokens of context at the start.
// "two-trips" reports the step done in its own round trip; "notify"
// carries it on the next step's request, as the gateway does; "+plan" adds
// building every layer's slots and block tables from the client's mirror;
// "+stepplan" only what the gateway's reserve does now (blocks.StepPlan:
// the layers' plans are built in the forward pass, while the device runs).
func BenchmarkStepRoundTrip(b *testing.B) {
	for _, mode := range []string{"two-trips", "done-with-next", "done-with-next+plan", "done-with-next+stepplan", "notify (h2o layers)"} {
		b.Run(mode, func(b *testing.B) {
			d := startKVDB(b, strings.HasPrefix(mode, "notify"))
			ctx := context.Background()
			c, err := ipc.Dial(ctx, d, ipc.Options{Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Shutdown()
			// KVD_BENCH_SEQS and KVD_BENCH_CTX change the batch and context
			// (32 and 5000: the 8B serving workload's decode).
			seqs, ctxLen, reset := envInt("KVD_BENCH_SEQS", 64), envInt("KVD_BENCH_CTX", 128), 512
			open := func() {
				ids := make([]uint64, seqs)
				prefill := make([]blocks.Append, seqs)
				for i := range ids {
					ids[i] = uint64(i + 1)
					prefill[i] = blocks.Append{Seq: blocks.SeqID(i + 1), N: ctxLen}
				}
				if err := c.Open(ctx, ids...); err != nil {
					b.Fatal(err)
				}
				st, err := c.Step(ctx, prefill)
				if err != nil {
					b.Fatal(err)
				}
				if err := c.StepDone(ctx, st.ID, false); err != nil {
					b.Fatal(err)
				}
			}
			closeAll := func() {
				for i := range seqs {
					c.Close(ctx, uint64(i+1))
				}
			}
			step := make([]blocks.Append, seqs)
			for i := range step {
				step[i] = blocks.Append{Seq: blocks.SeqID(i + 1), N: 1}
			}
			open()
			b.ResetTimer()
			for i := range b.N {
				if i > 0 && i%reset == 0 { // keep the context from growing without bound
					b.StopTimer()
					closeAll()
					open()
					b.StartTimer()
				}
				st, err := c.Step(ctx, step)
				if err != nil {
					b.Fatal(err)
				}
				switch mode {
				case "two-trips":
					err = c.StepDone(ctx, st.ID, false)
				case "done-with-next+plan":
					_, err = c.Plan(st)
					c.Done(st.ID, false)
				case "done-with-next+stepplan": // the gateway's reserve: the layers' plans come later, in the forward pass
					_, err = c.StepPlan(st)
					c.Done(st.ID, false)
				default:
					c.Done(st.ID, false)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/step")
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// startKVDB starts kvd for a benchmark with 32 layers and a large pool of
// small blocks (the round trip's cost does not depend on the head size).
func startKVDB(b *testing.B, evict bool) string {
	b.Helper()
	// Room for every sequence's context and the steps before a reset: a
	// block of 16 tokens at one head of 8 is 1088 bytes.
	seqs, ctxLen := envInt("KVD_BENCH_SEQS", 64), envInt("KVD_BENCH_CTX", 128)
	mib := max(512, seqs*32*((ctxLen+512)/16+2)*1088*5/4>>20)
	flags := []string{"--layers", "32", "--kv-heads", "1", "--head-dim", "8", "--kv-memory", fmt.Sprintf("%dMiB", mib)}
	if evict {
		// Decode-time H2O on every layer, with a budget no sequence
		// reaches here: the step done goes out as a notice, and kvd checks
		// every layer at each one.
		flags = append(flags, "--kv-policy", "all=full/h2o:heavy=4000,recent=32")
	}
	d := startKVDWith(b, fmt.Sprintf("%s/kvd.sock", b.TempDir()), flags...)
	return d.sock
}
