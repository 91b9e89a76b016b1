// Command sparsity measures what layer-wise KV sparsity saves on the CPU:
// for a long prompt on the tiny model, the KV bytes one sequence holds and
// the decode speed, with every layer full and with the seed's preset (the
// last 3 of 4 layers keep a SnapKV window held by H2O) at three windows.
//
//	go run ./bench/sparsity [-prompt 3000] [-decode 128] [-batch 1]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/kvd-project/kvd/bench/machine"
	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/policy"
)

func main() {
	promptLen := flag.Int("prompt", 3000, "prompt tokens")
	decode := flag.Int("decode", 128, "tokens decoded after the prompt")
	batch := flag.Int("batch", 1, "sequences decoded together")
	sparse := flag.Int("sparse-layers", 3, "layers the preset makes sparse")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the decode steps here")
	only := flag.String("only", "", "run only the rows whose name contains this")
	flag.Parse()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	dir, err := os.MkdirTemp("", "sparsity")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 1}); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	m, err := model.Load(ctx, dir, kernels.NewCPU(), model.LoadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	c := m.Config
	const blockSize = 16
	blockBytes := 4 * (2*c.NumKVHeads*blockSize*c.HeadDim + c.NumKVHeads*blockSize)

	type row struct {
		name string
		spec policy.Spec
	}
	rows := []row{{"full", policy.AllFull(c.NumLayers)}}
	for _, w := range []int{1024, 1280, 1536} {
		s, err := policy.Seed(c.NumLayers, *sparse, w)
		if err != nil {
			log.Fatal(err)
		}
		rows = append(rows, row{fmt.Sprintf("%d sparse layers, window %d", *sparse, w), s})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	prompts := make([][]int32, *batch)
	for i := range prompts {
		prompts[i] = make([]int32, *promptLen)
		for j := range prompts[i] {
			prompts[i][j] = int32(rng.IntN(c.VocabSize - 8))
		}
	}
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	fmt.Printf("tiny model (%d layers, %d KV heads × %d dims, float32 KV), prompt %d, decode %d, batch %d\n",
		c.NumLayers, c.NumKVHeads, c.HeadDim, *promptLen, *decode, *batch)
	fmt.Printf("CPU %s, %d threads, commit %s, %s\n\n", machine.CPUName(), runtime.GOMAXPROCS(0), strings.TrimSpace(string(commit)), time.Now().Format("2006-01-02"))
	fmt.Printf("| %-30s | %14s | %8s | %14s | %8s |\n", "KV policy", "KV bytes / seq", "vs full", "decode tok/s", "vs full")
	fmt.Printf("|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 32), strings.Repeat("-", 16), strings.Repeat("-", 10), strings.Repeat("-", 16), strings.Repeat("-", 10))
	var fullBytes, fullRate float64
	for _, r := range rows {
		if !strings.Contains(r.name, *only) {
			continue
		}
		need := *batch * c.NumLayers * ((*promptLen+*decode+blockSize-1)/blockSize + 1)
		rn, err := runner.NewEmbedded(m, need+1, blockSize, r.spec)
		if err != nil {
			log.Fatal(err)
		}
		work := make([]runner.Work, *batch)
		for i := range work {
			rn.Open(ctx, uint64(i+1))
			work[i] = runner.Work{Seq: uint64(i + 1), Tokens: prompts[i]}
		}
		if _, err := rn.Step(ctx, work); err != nil {
			log.Fatal(err)
		}
		start := time.Now()
		for range *decode {
			for i := range work {
				work[i].Tokens = []int32{int32(rng.IntN(c.VocabSize - 8))}
			}
			if _, err := rn.Step(ctx, work); err != nil {
				log.Fatal(err)
			}
		}
		rate := float64(*decode**batch) / time.Since(start).Seconds()
		used := need + 1 - 1 - rn.FreeBlocks()
		bytes := float64(used*blockBytes) / float64(*batch)
		if r.name == "full" {
			fullBytes, fullRate = bytes, rate
		}
		fmt.Printf("| %-30s | %14.0f | %7.2fx | %14.1f | %7.2fx |\n", r.name, bytes, fullBytes/bytes, rate, rate/fullRate)
	}
}
