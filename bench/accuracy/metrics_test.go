package main

import (
	"bytes"
	"compress/gzip"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestEditSimilarity(t *testing.T) {
	cases := []struct {
		a, b string
		want float64
	}{
		{"return x", "return x", 100},
		{"  return x\n", "return x", 100},
		{"", "", 100},
		{"abc", "", 0},
		{"kitten", "sitting", 100 * (1 - 3.0/7)},
		{"héllo", "hello", 80},
	}
	for _, c := range cases {
		if got := editSimilarity(c.a, c.b); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("editSimilarity(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{1, 2, 3, 4})
	if s.Mean != 2.5 || s.N != 4 || math.Abs(s.CI-1.96*math.Sqrt(5.0/3/4)) > 1e-12 {
		t.Errorf("%+v", s)
	}
	if !math.IsNaN(summarize(nil).Mean) {
		t.Error("the mean of nothing is not NaN")
	}
}

func TestRelativePaired(t *testing.T) {
	full := []float64{100, 0, 100, 50}
	// The same drop on every sample: no spread in the paired difference,
	// though the scores themselves vary widely.
	r, ci := relative(esKey("line-2048"), []float64{90, -10, 90, 40}, full)
	if math.Abs(r-(1-10/62.5)) > 1e-12 || ci != 0 {
		t.Errorf("relative = %v ± %v, want %v ± 0", r, ci, 1-10/62.5)
	}
	r, ci = relative(loglikKey, []float64{-1.1, -2.1}, []float64{-1, -2})
	if math.Abs(r-math.Exp(-0.1)) > 1e-12 || ci > 1e-12 {
		t.Errorf("loglik relative = %v ± %v, want %v ± 0", r, ci, math.Exp(-0.1))
	}
	// A run cut off after its first sample pairs with full's first.
	if r, _ := relative(loglikKey, []float64{-1.5}, []float64{-1, -2}); math.Abs(r-math.Exp(-0.5)) > 1e-12 {
		t.Errorf("partial run: relative = %v, want %v", r, math.Exp(-0.5))
	}
	if r, _ := relative(loglikKey, nil, []float64{-1, -2}); !math.IsNaN(r) {
		t.Errorf("no samples gave %v, want NaN", r)
	}
}

func TestPick(t *testing.T) {
	cs := defaultGrid.configs(8)
	got, err := pick(cs, "0,3-4", "")
	if err != nil || len(got) != 3 || got[0].Name != "full" || got[1] != cs[3] || got[2] != cs[4] {
		t.Fatalf("pick(0,3-4) = %v, %v", got, err)
	}
	for _, bad := range []string{"x", "4-3", "99", "-1"} {
		if _, err := pick(cs, bad, ""); err == nil {
			t.Errorf("pick(%q) took it", bad)
		}
	}
	if got, _ := pick(cs, "", "snapkv"); len(got) != 3 { // full, snapkv, snapkv+h2o
		t.Errorf("pick(-only snapkv) = %d configurations, want 3", len(got))
	}
}

func TestGridConfigs(t *testing.T) {
	cs := defaultGrid.configs(8)
	if len(cs) != 15 || cs[1].Policy != "2-7=snapkv:budget=1024/h2o:recent=32" || cs[9].Policy != "0-7=snapkv:budget=1536/h2o:recent=32" {
		t.Fatalf("default grid on 8 layers: %d configurations, %+v ... %+v", len(cs), cs[1], cs[9])
	}
	if cs[10].Name != "window" || cs[10].Policy != "1-7=window:sinks=4,window=1020" {
		t.Errorf("first policy row: %+v", cs[10])
	}
	var extra policyFlags
	if err := extra.Set("mine=0-7=snapkv:budget=512"); err != nil {
		t.Fatal(err)
	}
	if err := extra.Set("no-spec"); err == nil {
		t.Error("-policy without a spec was taken")
	}
	g := grid{Rows: []int{4}, Windows: []int{256}, Policies: extra}
	cs = g.configs(8)
	if len(cs) != 3 || cs[1].Policy != "4-7=snapkv:budget=256/h2o:recent=32" || cs[2].Name != "mine" || cs[2].Policy != "0-7=snapkv:budget=512" {
		t.Errorf("custom grid: %+v", cs)
	}
	// -kv-cache-dtype-also: full KV and the middle row's first window
	// again over a bfloat16 pool.
	also := withKVType(defaultGrid.configs(32), "bfloat16")
	if len(also) != 2 || also[0].Name != "full, bfloat16 KV" || also[0].Policy != "" || also[0].KVType != "bfloat16" ||
		also[1].Name != "26 sparse layers, window 1024, bfloat16 KV" || also[1].Policy != "6-31=snapkv:budget=1024/h2o:recent=32" ||
		also[1].KVType != "bfloat16" || also[1].Kind != "custom" {
		t.Errorf("-kv-cache-dtype-also: %+v", also)
	}
}

// TestReadSamplesGzip reads a sample set committed compressed as it reads
// a plain one.
func TestReadSamplesGzip(t *testing.T) {
	dir := t.TempDir()
	plain := []byte(`{"seed": 3, "samples": []}`)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(plain)
	w.Close()
	os.WriteFile(filepath.Join(dir, "s.json"), plain, 0o644)
	os.WriteFile(filepath.Join(dir, "s.json.gz"), gz.Bytes(), 0o644)
	for _, name := range []string{"s.json", "s.json.gz"} {
		b, err := readSamples(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(b, plain) {
			t.Errorf("%s: got %q, %v; want %q", name, b, err, plain)
		}
	}
	os.WriteFile(filepath.Join(dir, "bad.json.gz"), plain, 0o644)
	if _, err := readSamples(filepath.Join(dir, "bad.json.gz")); err == nil {
		t.Error("a .gz that is not gzip read without an error")
	}
}
