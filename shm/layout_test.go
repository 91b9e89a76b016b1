package shm

import (
	"errors"
	"testing"
)

func TestResolveDType(t *testing.T) {
	for _, c := range []struct {
		in      string
		gpu     bool
		headDim int
		want    DType
	}{
		{"auto", true, 128, BFloat16}, {"auto", false, 128, Float32},
		{"auto", true, 65, Float32}, // odd: bfloat16 cannot pack it
		{"float32", true, 128, Float32}, {"fp32", false, 64, Float32},
		{"bfloat16", false, 64, BFloat16}, {"bf16", true, 128, BFloat16},
		{"bfloat16", true, 65, BFloat16}, // asked for: Validate says why not
		{"fp8", false, 128, FP8E4M3}, {"fp8_e4m3", true, 64, FP8E4M3},
	} {
		got, err := ResolveDType(c.in, c.gpu, c.headDim)
		if err != nil || got != c.want {
			t.Errorf("ResolveDType(%q, gpu=%v, head dim %d) = %v, %v; want %v", c.in, c.gpu, c.headDim, got, err, c.want)
		}
	}
	if err := (Layout{NumBlocks: 2, BlockSize: 16, KVHeads: 1, HeadDim: 65, DType: BFloat16}).Validate(); !errors.Is(err, ErrLayout) {
		t.Errorf("a bfloat16 layout of head dim 65 validates: %v", err)
	}
	if err := (Layout{NumBlocks: 2, BlockSize: 16, KVHeads: 1, HeadDim: 66, DType: FP8E4M3}).Validate(); !errors.Is(err, ErrLayout) {
		t.Errorf("an fp8 layout of head dim 66 validates: %v", err)
	}
	// Words a row: 128 dims as float32, bfloat16 (two a word), fp8 (four).
	for dt, want := range map[DType]int{Float32: 128, BFloat16: 64, FP8E4M3: 32} {
		if l := (Layout{NumBlocks: 2, BlockSize: 16, KVHeads: 2, HeadDim: 128, DType: dt}); l.Validate() != nil || l.RowElems() != want || l.BlockElems() != 2*2*16*want+2*16 {
			t.Errorf("%v: %d words a row, %d a block (valid: %v), want %d a row", dt, l.RowElems(), l.BlockElems(), l.Validate(), want)
		}
	}
	for _, gpu := range []bool{false, true} {
		if _, err := ResolveDType("fp16", gpu, 128); !errors.Is(err, ErrLayout) {
			t.Errorf("ResolveDType(fp16, gpu=%v): %v, want ErrLayout", gpu, err)
		}
	}
}
