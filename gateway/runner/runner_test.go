package runner_test

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/kernels"
)

// TestKernelProfileEnv checks KVD_KERNEL_PROFILE: a malformed value stops
// the runner with a message that names the variable and its form, and a
// well-formed one on a backend that cannot profile (the CPU's) changes
// nothing a step computes.
func TestKernelProfileEnv(t *testing.T) {
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := model.Load(ctx, dir, kernels.NewCPU(), model.LoadOptions{Progress: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	greedy := func() []int32 {
		t.Helper()
		r, err := runner.NewEmbedded(m, runner.BlocksFor(m.Config, 64, 16), 16, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Shutdown()
		out, err := r.Greedy(ctx, 1, []int32{1, 2, 3, 4, 5, 6, 7, 8}, 12, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want := greedy()
	t.Setenv("KVD_KERNEL_PROFILE", "2:3")
	if got := greedy(); !slices.Equal(got, want) {
		t.Errorf("with KVD_KERNEL_PROFILE=2:3 greedy gave %v, without %v", got, want)
	}
	for _, bad := range []string{"x", "5", "3:0", "-1:2"} {
		t.Setenv("KVD_KERNEL_PROFILE", bad)
		_, err := runner.NewEmbedded(m, runner.BlocksFor(m.Config, 64, 16), 16, nil)
		if err == nil || !strings.Contains(err.Error(), "KVD_KERNEL_PROFILE") || !strings.Contains(err.Error(), "FROM:N") {
			t.Errorf("KVD_KERNEL_PROFILE=%q: err %v, want one naming the variable and FROM:N", bad, err)
		}
	}
}
