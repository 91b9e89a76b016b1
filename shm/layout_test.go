package shm

import (
	"errors"
	"testing"
)

func TestResolveDType(t *testing.T) {
	for _, c := range []struct {
		in   string
		gpu  bool
		want DType
	}{
		{"auto", true, BFloat16}, {"auto", false, Float32},
		{"float32", true, Float32}, {"fp32", false, Float32},
		{"bfloat16", false, BFloat16}, {"bf16", true, BFloat16},
	} {
		got, err := ResolveDType(c.in, c.gpu)
		if err != nil || got != c.want {
			t.Errorf("ResolveDType(%q, gpu=%v) = %v, %v; want %v", c.in, c.gpu, got, err, c.want)
		}
	}
	for _, gpu := range []bool{false, true} {
		if _, err := ResolveDType("fp16", gpu); !errors.Is(err, ErrLayout) {
			t.Errorf("ResolveDType(fp16, gpu=%v): %v, want ErrLayout", gpu, err)
		}
	}
}
