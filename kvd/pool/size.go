package pool

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd/shm"
)

// ParseSize reads a pool size: bytes ("1073741824"), with a unit ("512MiB",
// "1GiB", "64KiB", or KB/MB/GB as powers of 1000), or a fraction in (0, 1]
// of the host's available memory ("0.5").
func ParseSize(s string) (int64, error) {
	return ParseSizeOf(s, AvailableMemory)
}

// ParseSizeOf is ParseSize with a fraction taken of what avail reports
// (free GPU memory, for a pool on the GPU).
func ParseSizeOf(s string, avail func() (int64, error)) (int64, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 && f <= 1 && !strings.ContainsAny(s, "BKMG") {
		a, err := avail()
		if err != nil {
			return 0, fmt.Errorf("%q as a fraction of available memory: %w", s, err)
		}
		return int64(f * float64(a)), nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	num, mult := s, int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size (bytes, 512MiB, 4GiB, or a fraction like 0.5)", s)
	}
	return int64(n * float64(mult)), nil
}

// AvailableMemory reads MemAvailable from /proc/meminfo.
func AvailableMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no MemAvailable in /proc/meminfo")
}

// LayoutFor sizes a pool of this geometry and K/V dtype to fit bytes.
func LayoutFor(bytes int64, blockSize, kvHeads, headDim int, dt shm.DType) (shm.Layout, error) {
	l := shm.Layout{BlockSize: blockSize, KVHeads: kvHeads, HeadDim: headDim, DType: dt}
	if blockSize < 1 || kvHeads < 1 || headDim < 1 {
		return l, fmt.Errorf("%w: block size %d, %d KV heads of dim %d", shm.ErrLayout, blockSize, kvHeads, headDim)
	}
	if err := shm.CheckHeadDim(dt, headDim); err != nil {
		return l, err
	}
	per := int64(l.BlockElems()) * 4
	l.NumBlocks = int(bytes / per)
	if err := l.Validate(); err != nil {
		return l, fmt.Errorf("%d bytes hold %d blocks of %d bytes: %w", bytes, l.NumBlocks, per, err)
	}
	return l, nil
}
