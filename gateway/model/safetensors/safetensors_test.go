package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testTensors makes tensors of odd shapes, a scalar and an empty one
// included, with values of every magnitude.
func testTensors(rng *rand.Rand) []WriteTensor {
	shapes := []struct {
		name  string
		shape []int
	}{
		{"model.embed_tokens.weight", []int{17, 33}},
		{"model.layers.0.self_attn.q_proj.weight", []int{33, 33}},
		{"model.norm.weight", []int{33}},
		{"scalar", []int{}},
		{"empty", []int{0, 5}},
		{"lm_head.weight", []int{97, 3}},
	}
	var ts []WriteTensor
	for _, s := range shapes {
		n := 1
		for _, d := range s.shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			switch i % 4 {
			case 0:
				data[i] = float32(rng.NormFloat64())
			case 1:
				data[i] = float32(rng.NormFloat64() * 1e-3)
			case 2:
				data[i] = float32(i % 256) // exact in every dtype
			case 3:
				data[i] = float32(rng.NormFloat64() * 100)
			}
		}
		ts = append(ts, WriteTensor{s.name, s.shape, data})
	}
	return ts
}

func newRNG(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 2))
}

// relTol is the worst relative rounding error of dtype in its normal range.
func relTol(d DType) float64 {
	switch d {
	case BF16:
		return 1.0 / 256 // 8 significant bits: 2^-9 plus slack
	case F16:
		return 1.0 / 2048
	}
	return 0
}

func roundTo(d DType, v float32) float32 {
	switch d {
	case BF16:
		return BF16ToFloat32(Float32ToBF16(v))
	case F16:
		return F16ToFloat32(Float32ToF16(v))
	}
	return v
}

// checkReference validates a file the way the reference implementation
// does, which is stricter than Open: padded header starting with '{',
// offsets contiguous from 0 in file order, no bytes past the last tensor.
func checkReference(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	if n%8 != 0 || 8+n > uint64(len(b)) || b[8] != '{' {
		t.Fatalf("%s: header length %d, file %d bytes, starts %q", path, n, len(b), b[8])
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var meta map[string]string
	if err := json.Unmarshal(hdr["__metadata__"], &meta); err != nil || meta["format"] != "pt" {
		t.Fatalf("%s: __metadata__ %s: want format pt", path, hdr["__metadata__"])
	}
	type span struct{ begin, end int64 }
	var spans []span
	for name, raw := range hdr {
		if name == "__metadata__" {
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s: %s: %v", path, name, err)
		}
		spans = append(spans, span{e.DataOffsets[0], e.DataOffsets[1]})
	}
	// By begin, then end: an empty tensor shares its begin with the next.
	slices.SortFunc(spans, func(a, b span) int {
		if a.begin != b.begin {
			return int(a.begin - b.begin)
		}
		return int(a.end - b.end)
	})
	var at int64
	for _, s := range spans {
		if s.begin != at {
			t.Fatalf("%s: tensor data not contiguous at %d: %v", path, at, spans)
		}
		at = s.end
	}
	if 8+int64(n)+at != int64(len(b)) {
		t.Fatalf("%s: data ends at %d, file has %d bytes", path, 8+int64(n)+at, len(b))
	}
	return meta
}

func TestWriteOpenRoundTrip(t *testing.T) {
	rng := newRNG(t)
	tensors := testTensors(rng)
	var dataBytes int64 // at 2 bytes per element
	for _, w := range tensors {
		dataBytes += int64(2 * len(w.Data))
	}
	for _, tc := range []struct {
		name     string
		dtype    DType
		maxShard int64
		shards   int
	}{
		{"f32 single", F32, 0, 1},
		{"f16 single", F16, 0, 1},
		{"bf16 single", BF16, 0, 1},
		{"bf16 fits exactly", BF16, dataBytes, 1},
		{"f32 sharded", F32, 4400, 3},
		{"f16 sharded", F16, 33 * 33 * 2, 3},
		{"bf16 shard per tensor", BF16, 1, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			meta := map[string]string{"producer": "kvd test"}
			if err := Write(dir, tensors, tc.dtype, tc.maxShard, meta); err != nil {
				t.Fatal(err)
			}
			files := weightFiles(t, dir)
			if tc.shards == 1 {
				if !slices.Equal(files, []string{SingleFile}) {
					t.Fatalf("files %v, want %s only", files, SingleFile)
				}
			} else {
				want := []string{IndexFile}
				for i := range tc.shards {
					want = append(want, shardName(i+1, tc.shards))
				}
				slices.Sort(want)
				if !slices.Equal(files, want) {
					t.Fatalf("files %v, want %v", files, want)
				}
			}
			for _, f := range files {
				if f != IndexFile {
					checkReference(t, filepath.Join(dir, f))
				}
			}

			c, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var names []string
			var total int64
			for _, w := range tensors {
				names = append(names, w.Name)
				total += int64(len(w.Data) * tc.dtype.Bits() / 8)
			}
			slices.Sort(names)
			if got := c.Names(); !slices.Equal(got, names) {
				t.Errorf("Names() = %v, want %v", got, names)
			}
			if got := c.TotalBytes(); got != total {
				t.Errorf("TotalBytes() = %d, want %d", got, total)
			}
			if got := c.Metadata(); got["producer"] != "kvd test" || got["format"] != "pt" {
				t.Errorf("Metadata() = %v", got)
			}
			for _, w := range tensors {
				tn, err := c.Get(w.Name)
				if err != nil {
					t.Fatal(err)
				}
				if tn.DType != tc.dtype || !slices.Equal(tn.Shape, w.Shape) || tn.Name != w.Name {
					t.Fatalf("%s: got %s %v %q", w.Name, tn.DType, tn.Shape, tn.Name)
				}
				if tn.NumElements() != len(w.Data) {
					t.Fatalf("%s: NumElements() = %d, want %d", w.Name, tn.NumElements(), len(w.Data))
				}
				got := make([]float32, len(w.Data))
				if err := tn.Float32(got); err != nil {
					t.Fatal(err)
				}
				for i, v := range w.Data {
					if want := roundTo(tc.dtype, v); math.Float32bits(got[i]) != math.Float32bits(want) {
						t.Fatalf("%s[%d] = %g, want %g (from %g)", w.Name, i, got[i], want, v)
					}
					// Independent of the helpers: the error is within the
					// dtype's precision, and small integers are exact.
					if math.Abs(float64(v)) > 1e-4 && math.Abs(float64(got[i]-v)) > relTol(tc.dtype)*math.Abs(float64(v)) {
						t.Fatalf("%s[%d] = %g, too far from %g", w.Name, i, got[i], v)
					}
					if i%4 == 2 && got[i] != v {
						t.Fatalf("%s[%d] = %g, want exactly %g", w.Name, i, got[i], v)
					}
				}
				if _, ok := tn.Float32View(); ok != (tc.dtype == F32) {
					t.Errorf("%s: Float32View ok = %v for %s", w.Name, ok, tc.dtype)
				}
			}
		})
	}
}

func weightFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// The bytes of a small file, pinned: header keys sorted, padded with spaces
// to 8 bytes, data in the order given.
func TestWriteGolden(t *testing.T) {
	dir := t.TempDir()
	ts := []WriteTensor{
		{"b", []int{2}, []float32{1, -2}},
		{"a", []int{1, 1}, []float32{0.5}},
	}
	if err := Write(dir, ts, BF16, 0, map[string]string{"x": "<&>"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, SingleFile))
	if err != nil {
		t.Fatal(err)
	}
	hdr := `{"__metadata__":{"format":"pt","x":"<&>"},` +
		`"a":{"data_offsets":[4,6],"dtype":"BF16","shape":[1,1]},` +
		`"b":{"data_offsets":[0,4],"dtype":"BF16","shape":[2]}}`
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	want := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	want = append(want, hdr...)
	want = append(want, 0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f) // 1, -2, 0.5
	if !bytes.Equal(got, want) {
		t.Errorf("file bytes\n got %q\nwant %q", got, want)
	}

	// Deterministic: a second write gives the same bytes.
	dir2 := t.TempDir()
	if err := Write(dir2, ts, BF16, 0, map[string]string{"x": "<&>"}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir2, SingleFile)); !bytes.Equal(again, got) {
		t.Error("second write differs")
	}
}

// The index is what transformers writes: json.dumps(indent=2,
// sort_keys=True) and a newline, shards numbered from 1 in five digits.
func TestWriteIndex(t *testing.T) {
	dir := t.TempDir()
	ts := []WriteTensor{
		{"z.weight", []int{4}, make([]float32, 4)},
		{"a.weight", []int{2, 2}, make([]float32, 4)},
		{"m.weight", []int{6}, make([]float32, 6)},
		{"ünï", []int{1}, make([]float32, 1)},
	}
	if err := Write(dir, ts, F16, 16, nil); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "metadata": {
    "total_size": 30
  },
  "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors",
    "m.weight": "model-00002-of-00002.safetensors",
    "z.weight": "model-00001-of-00002.safetensors",
    "\u00fcn\u00ef": "model-00002-of-00002.safetensors"
  }
}
`
	if string(got) != want {
		t.Errorf("index\n%s\nwant\n%s", got, want)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct{ name, file string }{
		{"z.weight", "model-00001-of-00002.safetensors"},
		{"m.weight", "model-00002-of-00002.safetensors"},
		{"ünï", "model-00002-of-00002.safetensors"},
	} {
		tn, err := c.Get(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.File != filepath.Join(dir, tc.file) {
			t.Errorf("%s in %s, want %s", tc.name, tn.File, tc.file)
		}
	}
}

// Rewriting a checkpoint in another layout leaves no stale weights behind
// that Open would prefer.
func TestWriteReplacesLayout(t *testing.T) {
	dir := t.TempDir()
	v1 := []WriteTensor{{"a", []int{2}, []float32{1, 2}}, {"b", []int{2}, []float32{3, 4}}}
	v2 := []WriteTensor{{"a", []int{2}, []float32{5, 6}}}
	v3 := []WriteTensor{{"c", []int{1}, []float32{7}}, {"d", []int{1}, []float32{8}}, {"e", []int{1}, []float32{9}}}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
	for _, step := range []struct {
		name     string
		tensors  []WriteTensor
		maxShard int64
		files    []string
	}{
		{"sharded", v1, 8, []string{"config.json", IndexFile, shardName(1, 2), shardName(2, 2)}},
		{"single", v2, 0, []string{"config.json", SingleFile}},
		{"three shards", v3, 4, []string{"config.json", IndexFile, shardName(1, 3), shardName(2, 3), shardName(3, 3)}},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := Write(dir, step.tensors, F32, step.maxShard, nil); err != nil {
				t.Fatal(err)
			}
			slices.Sort(step.files)
			if got := weightFiles(t, dir); !slices.Equal(got, step.files) {
				t.Fatalf("files %v, want %v", got, step.files)
			}
			c, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, w := range step.tensors {
				tn, err := c.Get(w.Name)
				if err != nil {
					t.Fatal(err)
				}
				v, _ := tn.Float32View()
				if !slices.Equal(v, w.Data) {
					t.Errorf("%s = %v, want %v", w.Name, v, w.Data)
				}
			}
			if len(c.Names()) != len(step.tensors) {
				t.Errorf("Names() = %v", c.Names())
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tensors []WriteTensor
		dtype   DType
		want    error
	}{
		{"data shorter than shape", []WriteTensor{{"a", []int{2, 2}, make([]float32, 3)}}, F32, ErrShape},
		{"negative dimension", []WriteTensor{{"a", []int{-1}, nil}}, F32, ErrShape},
		{"unsupported dtype", []WriteTensor{{"a", []int{1}, []float32{1}}}, I8, ErrDType},
		{"duplicate name", []WriteTensor{{"a", []int{1}, []float32{1}}, {"a", []int{1}, []float32{1}}}, F32, nil},
		{"reserved name", []WriteTensor{{"__metadata__", []int{1}, []float32{1}}}, F32, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := Write(dir, tc.tensors, tc.dtype, 0, nil)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.dtype != I8 && !strings.Contains(err.Error(), `"`+tc.tensors[0].Name+`"`) {
				t.Errorf("%v does not name the tensor", err)
			}
			if files := weightFiles(t, dir); len(files) != 0 {
				t.Errorf("left files %v", files)
			}
		})
	}
}

// rawFile writes a safetensors image with the given header JSON (padded as
// the writer pads) and data, and returns its path.
func rawFile(t *testing.T, dir, header string, data []byte) string {
	t.Helper()
	for len(header)%8 != 0 {
		header += " "
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), data...)
	path := filepath.Join(dir, SingleFile)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenErrors(t *testing.T) {
	// mutate turns a valid one-file checkpoint of tensors "a" (F32 [2]) and
	// "b" (BF16 [3]) into a broken one; it returns the file whose name the
	// error must contain.
	base := func(t *testing.T, dir string) string {
		t.Helper()
		return rawFile(t, dir, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},`+
			`"b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}}`, make([]byte, 14))
	}
	rewrite := func(t *testing.T, path string, f func([]byte) []byte) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, f(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	header := func(h string) func(*testing.T, string) string {
		return func(t *testing.T, dir string) string { return rawFile(t, dir, h, make([]byte, 16)) }
	}
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, dir string) string
		want   []error
		tensor string // the tensor the message must name, if any
	}{
		{"truncated data", func(t *testing.T, dir string) string {
			p := base(t, dir)
			rewrite(t, p, func(b []byte) []byte { return b[:len(b)-3] })
			return p
		}, []error{ErrTruncated}, "b"},
		{"header length past end", func(t *testing.T, dir string) string {
			p := base(t, dir)
			rewrite(t, p, func(b []byte) []byte {
				binary.LittleEndian.PutUint64(b, uint64(len(b)))
				return b
			})
			return p
		}, []error{ErrCorrupt, ErrTruncated}, ""},
		{"header length over 100 MB", func(t *testing.T, dir string) string {
			p := base(t, dir)
			rewrite(t, p, func(b []byte) []byte {
				binary.LittleEndian.PutUint64(b, 100_000_001)
				return b
			})
			return p
		}, []error{ErrCorrupt}, ""},
		{"shorter than length prefix", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, SingleFile)
			os.WriteFile(p, []byte{1, 0, 0}, 0o644)
			return p
		}, []error{ErrCorrupt}, ""},
		{"garbage json", header(`{"a":{"dtype":"F32",,}`), []error{ErrCorrupt}, ""},
		{"not an object", header(`[1,2]`), []error{ErrCorrupt}, ""},
		{"bytes after object", header(`{}x`), []error{ErrCorrupt}, ""},
		{"not utf-8", header("{\"\xff\":1}"), []error{ErrCorrupt}, ""},
		{"duplicate tensor", header(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},` +
			`"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`), []error{ErrCorrupt}, "a"},
		{"entry not an object", header(`{"a":null}`), []error{ErrCorrupt}, "a"},
		{"metadata not strings", header(`{"__metadata__":{"n":1}}`), []error{ErrCorrupt}, ""},
		{"overlapping offsets", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
			`"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`), []error{ErrCorrupt}, "b"},
		{"shape does not match size", header(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`), []error{ErrShape}, "a"},
		{"sub-byte size", header(`{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`), []error{ErrShape}, "a"},
		{"end before begin", header(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}}`), []error{ErrCorrupt}, "a"},
		{"negative offset", header(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`), []error{ErrCorrupt}, "a"},
		{"one offset", header(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[1]}}`), []error{ErrCorrupt}, "a"},
		{"no shape", header(`{"a":{"dtype":"U8","data_offsets":[0,0]}}`), []error{ErrCorrupt}, "a"},
		{"negative dim", header(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`), []error{ErrCorrupt}, "a"},
		{"huge shape", header(`{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`), []error{ErrCorrupt}, "a"},
		{"unknown dtype", header(`{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}`), []error{ErrDType}, "a"},
		{"offsets past end", header(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[14,18]}}`), []error{ErrTruncated}, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.mutate(t, t.TempDir())
			c, err := Open(path)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("%v is not %v", err, w)
				}
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("%v does not name %s", err, path)
			}
			if tc.tensor != "" && !strings.Contains(err.Error(), `tensor "`+tc.tensor+`"`) {
				t.Errorf("%v does not name tensor %q", err, tc.tensor)
			}
		})
	}
}

func TestShardedErrors(t *testing.T) {
	ts := []WriteTensor{
		{"a", []int{2}, []float32{1, 2}},
		{"b", []int{2}, []float32{3, 4}},
	}
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   error
		names  []string // substrings the message must contain
	}{
		{"missing shard", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, shardName(2, 2)))
		}, fs.ErrNotExist, []string{shardName(2, 2), IndexFile}},
		{"tensor absent from shard", func(t *testing.T, dir string) {
			editIndex(t, dir, func(m map[string]string) { m["ghost"] = shardName(1, 2) })
		}, ErrMissingTensor, []string{`tensor "ghost"`, shardName(1, 2)}},
		{"tensor in the other shard", func(t *testing.T, dir string) {
			editIndex(t, dir, func(m map[string]string) { m["a"] = shardName(2, 2) })
		}, ErrMissingTensor, []string{`tensor "a"`, shardName(2, 2)}},
		{"shard outside dir", func(t *testing.T, dir string) {
			editIndex(t, dir, func(m map[string]string) { m["a"] = "../x.safetensors" })
		}, ErrCorrupt, []string{`tensor "a"`, "../x.safetensors"}},
		{"corrupt shard", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, shardName(1, 2)), []byte("\x02\x00\x00\x00\x00\x00\x00\x00{x"), 0o644)
		}, ErrCorrupt, []string{shardName(1, 2)}},
		{"garbage index", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map": [`), 0o644)
		}, ErrCorrupt, []string{IndexFile}},
		{"empty weight map", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"metadata": {}}`), 0o644)
		}, ErrCorrupt, []string{IndexFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, ts, F32, 8, nil); err != nil {
				t.Fatal(err)
			}
			tc.mutate(t, dir)
			c, err := Open(dir)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			if !errors.Is(err, tc.want) {
				t.Errorf("%v is not %v", err, tc.want)
			}
			for _, s := range tc.names {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%v does not name %s", err, s)
				}
			}
		})
	}
}

func editIndex(t *testing.T, dir string, f func(map[string]string)) {
	t.Helper()
	path := filepath.Join(dir, IndexFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var idx map[string]any
	var wm struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &wm)
	f(wm.WeightMap)
	idx["weight_map"] = wm.WeightMap
	b, _ = json.Marshal(idx)
	os.WriteFile(path, b, 0o644)
}

func TestOpenPaths(t *testing.T) {
	dir := t.TempDir()
	ts := []WriteTensor{{"a", []int{1}, []float32{1}}, {"b", []int{1}, []float32{2}}}
	sharded := filepath.Join(dir, "sharded")
	single := filepath.Join(dir, "single")
	if err := Write(sharded, ts, F32, 4, nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(single, ts, F32, 0, nil); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	for _, tc := range []struct {
		name string
		path string
		want error
	}{
		{"sharded dir", sharded, nil},
		{"single dir", single, nil},
		{"single file", filepath.Join(single, SingleFile), nil},
		{"one shard file", filepath.Join(sharded, shardName(2, 2)), nil},
		{"index file", filepath.Join(sharded, IndexFile), nil},
		{"empty dir", empty, ErrNoWeights},
		{"no such dir", filepath.Join(dir, "nope"), ErrNoWeights},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Open(tc.path)
			if tc.want != nil {
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.path) {
					t.Fatalf("err = %v, want %v naming %s", err, tc.want, tc.path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if len(c.Names()) == 0 {
				t.Error("no tensors")
			}
		})
	}
}

func TestGetAndClose(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, []WriteTensor{{"a", []int{2}, []float32{1, 2}}}, BF16, 0, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("nope"); !errors.Is(err, ErrMissingTensor) ||
		!strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Get(nope) = %v, want ErrMissingTensor naming it and %s", err, dir)
	}
	a, _ := c.Get("a")
	a.Shape[0] = 99 // the caller's copy
	if b, _ := c.Get("a"); b.Shape[0] != 2 {
		t.Error("Get shares the shape slice")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Get("a"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}

func TestFloat32Errors(t *testing.T) {
	dir := t.TempDir()
	path := rawFile(t, dir, `{"ints":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},`+
		`"f":{"dtype":"F16","shape":[2],"data_offsets":[8,12]}}`, make([]byte, 12))
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name   string
		tensor string
		dst    int
		want   error
		words  []string
	}{
		{"unsupported dtype", "ints", 2, ErrDType, []string{path, `tensor "ints"`, "I32"}},
		{"dst too short", "f", 1, ErrShape, []string{path, `tensor "f"`}},
		{"dst too long", "f", 3, ErrShape, []string{path, `tensor "f"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn, err := c.Get(tc.tensor)
			if err != nil {
				t.Fatal(err)
			}
			err = tn.Float32(make([]float32, tc.dst))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, w := range tc.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v does not name %s", err, w)
				}
			}
		})
	}
	// A tensor built by hand whose data disagrees with its shape is an
	// error, not a panic.
	bad := &Tensor{Name: "x", DType: BF16, Shape: []int{4}, Data: make([]byte, 6)}
	if err := bad.Float32(make([]float32, 4)); !errors.Is(err, ErrShape) {
		t.Errorf("inconsistent tensor: %v", err)
	}
}

// Tensors at odd offsets take the unaligned paths; results must not change.
func TestMisalignedTensors(t *testing.T) {
	dir := t.TempDir()
	var data []byte
	data = append(data, 7)                                               // "pad" U8 at 0
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(1.5)) // F32 at 1
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(-3))  //
	data = binary.LittleEndian.AppendUint16(data, Float32ToBF16(2.5))    // BF16 at 9
	data = binary.LittleEndian.AppendUint16(data, Float32ToF16(-0.125))  // F16 at 11
	data = binary.LittleEndian.AppendUint16(data, Float32ToF16(65504))   //
	rawFile(t, dir, `{"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},`+
		`"f32":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},`+
		`"bf16":{"dtype":"BF16","shape":[1],"data_offsets":[9,11]},`+
		`"f16":{"dtype":"F16","shape":[2],"data_offsets":[11,15]}}`, data)
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		want []float32
	}{
		{"f32", []float32{1.5, -3}},
		{"bf16", []float32{2.5}},
		{"f16", []float32{-0.125, 65504}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn, _ := c.Get(tc.name)
			got := make([]float32, len(tc.want))
			if err := tn.Float32(got); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if _, ok := tn.Float32View(); ok {
				t.Error("Float32View of a misaligned or non-F32 tensor")
			}
		})
	}
}

// Conversion split across goroutines agrees with the element-wise helpers,
// at a size that is not a multiple of any chunk, aligned or not.
func TestFloat32Parallel(t *testing.T) {
	rng := newRNG(t)
	const n = 3*minChunk + 1237
	for _, tc := range []struct {
		name   string
		dtype  DType
		widen  func([]byte) float32
		offset int
	}{
		{"bf16", BF16, func(b []byte) float32 { return BF16ToFloat32(binary.LittleEndian.Uint16(b)) }, 0},
		{"bf16 unaligned", BF16, func(b []byte) float32 { return BF16ToFloat32(binary.LittleEndian.Uint16(b)) }, 1},
		{"f16", F16, func(b []byte) float32 { return F16ToFloat32(binary.LittleEndian.Uint16(b)) }, 0},
		{"f16 unaligned", F16, func(b []byte) float32 { return F16ToFloat32(binary.LittleEndian.Uint16(b)) }, 1},
		{"f32", F32, func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }, 0},
		{"f32 unaligned", F32, func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.dtype.Bits() / 8
			buf := make([]byte, n*size+tc.offset)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			tn := &Tensor{Name: tc.name, DType: tc.dtype, Shape: []int{n}, Data: buf[tc.offset:]}
			got := make([]float32, n)
			if err := tn.Float32(got); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				want := tc.widen(tn.Data[i*size:])
				if math.Float32bits(got[i]) != math.Float32bits(want) {
					t.Fatalf("[%d] = %#08x, want %#08x", i, math.Float32bits(got[i]), math.Float32bits(want))
				}
			}
		})
	}
}

// An empty data region (no tensors, or only empty ones) maps fine.
func TestEmptyData(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tensors []WriteTensor
	}{
		{"no tensors", nil},
		{"empty tensor", []WriteTensor{{"e", []int{0}, nil}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, tc.tensors, F32, 0, nil); err != nil {
				t.Fatal(err)
			}
			checkReference(t, filepath.Join(dir, SingleFile))
			c, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.TotalBytes() != 0 || len(c.Names()) != len(tc.tensors) {
				t.Errorf("TotalBytes %d, Names %v", c.TotalBytes(), c.Names())
			}
			for _, n := range c.Names() {
				tn, _ := c.Get(n)
				if err := tn.Float32(nil); err != nil {
					t.Error(err)
				}
				if v, ok := tn.Float32View(); !ok || len(v) != 0 {
					t.Errorf("Float32View = %v, %v", v, ok)
				}
			}
		})
	}
}
