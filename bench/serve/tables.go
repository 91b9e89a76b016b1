package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// tables renders the results tools/gpu/bench.sh leaves in dir as the
// seed's tables: for each prefix (grid: the pool as large as the card
// allows; capped: weights and KV in 24 GiB), full KV and every
// PREFIX-LAYERS-WINDOW run, with output tokens/s, its ratio to full KV,
// and TTFT p50/p99. full's run is PREFIX-full.json, or full-sidecar.json
// for the grid.
func tables(w io.Writer, dir string) error {
	load := func(name string) (*report, error) {
		b, err := os.ReadFile(filepath.Join(dir, name+".json"))
		if err != nil {
			return nil, err
		}
		var rs []*report
		if err := json.Unmarshal(b, &rs); err != nil {
			return nil, fmt.Errorf("%s.json: %v", name, err)
		}
		if len(rs) == 0 {
			return nil, fmt.Errorf("%s.json: no results", name)
		}
		return rs[len(rs)-1], nil
	}
	found := false
	for _, t := range []struct{ prefix, full, title string }{
		{"grid", "full-sidecar", "The pool as large as the card allows"},
		{"capped", "capped-full", "Weights and KV in a 24 GiB card"},
	} {
		full, err := load(t.full)
		if err != nil {
			continue
		}
		type cell struct {
			layers, window int
			r              *report
		}
		var cells []cell
		matches, _ := filepath.Glob(filepath.Join(dir, t.prefix+"-*-*.json"))
		for _, m := range matches {
			parts := strings.Split(strings.TrimSuffix(filepath.Base(m), ".json"), "-")
			if len(parts) != 3 {
				continue
			}
			l, err1 := strconv.Atoi(parts[1])
			win, err2 := strconv.Atoi(parts[2])
			if err1 != nil || err2 != nil {
				continue
			}
			r, err := load(strings.TrimSuffix(filepath.Base(m), ".json"))
			if err != nil {
				return err
			}
			cells = append(cells, cell{l, win, r})
		}
		sort.Slice(cells, func(a, b int) bool {
			if cells[a].layers != cells[b].layers {
				return cells[a].layers < cells[b].layers
			}
			return cells[a].window > cells[b].window
		})
		found = true
		fmt.Fprintf(w, "### %s: %d in / %d out, concurrency %d, %d requests\n\n", t.title, full.InputLen, full.OutputLen, full.Concurrency, full.Completed+full.Failed)
		fmt.Fprintf(w, "| config | output tok/s | vs full | TTFT p50 | TTFT p99 | TPOT p50 | failed |\n|---|---|---|---|---|---|---|\n")
		row := func(name string, r *report) {
			fmt.Fprintf(w, "| %s | %.1f | %.2f | %.2f s | %.2f s | %.1f ms | %d |\n", name, r.OutputTokensPerSec, r.OutputTokensPerSec/full.OutputTokensPerSec,
				r.TTFT.P50/1e3, r.TTFT.P99/1e3, r.TPOT.P50, r.Failed)
		}
		row("full KV", full)
		for _, c := range cells {
			row(fmt.Sprintf("%d sparse layers, window %d", c.layers, c.window), c.r)
		}
		fmt.Fprintln(w)
	}
	if !found {
		return fmt.Errorf("%s has no full-sidecar.json or capped-full.json (tools/gpu/bench.sh's results)", dir)
	}
	return nil
}
