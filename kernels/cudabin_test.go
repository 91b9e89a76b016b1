package kernels

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKernelsBuiltFromSources fails when a .cu or .cuh file changed without
// `make kernels`: the committed fat binaries would not be what the sources
// say.
func TestKernelsBuiltFromSources(t *testing.T) {
	h := sha256.New()
	for _, pat := range []string{"*.cuh", "*.cu"} { // the order `cat kernels/*.cuh kernels/*.cu` reads them
		files, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			h.Write(b)
		}
	}
	want, err := os.ReadFile("cudabin/SOURCES.sha256")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) {
		t.Errorf("kernels/*.cu changed since the kernels were built (sources %s, built from %s): run make kernels", got, bytes.TrimSpace(want))
	}
	for _, f := range []string{"elementwise", "cache", "attention", "sampling"} {
		if st, err := os.Stat("cudabin/" + f + ".fatbin"); err != nil || st.Size() == 0 {
			t.Errorf("cudabin/%s.fatbin missing: run make kernels", f)
		}
	}
}

// TestSM90aPTX checks what the driver will be given on an H100 or H200:
// PTX marked for sm_90a (make kernels' sed) with every entry point that
// loadSM90a looks up.
func TestSM90aPTX(t *testing.T) {
	b, err := os.ReadFile("cudabin/attention_sm90a.ptx")
	if err != nil {
		t.Fatalf("%v: run make kernels", err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, want := range []string{".version 8.0", ".target sm_90a"} {
		if !lines[want] {
			t.Errorf("attention_sm90a.ptx has no %q line", want)
		}
	}
	if n := len(sm90aKernels()); n != 6 {
		t.Errorf("sm90aKernels: %d names, attention_sm90a.cu has 6 entry points", n)
	}
	for _, name := range sm90aKernels() {
		if !bytes.Contains(b, []byte(".visible .entry "+name+"(")) {
			t.Errorf("attention_sm90a.ptx has no entry point %s", name)
		}
	}
}
