package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/kvd-project/kvd/ipc"
)

func status(args []string, out io.Writer) error {
	fs := flag("kvd status", out)
	socket := fs.String("socket", ipc.DefaultSocket(), "kvd's unix socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := ipc.QueryStatus(ctx, *socket)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	printStatus(out, s)
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func printStatus(out io.Writer, s *ipc.Status) {
	fmt.Fprintf(out, "kvd %.8s  pid %d  up %s", s.Instance, s.PID, (time.Duration(s.UptimeSeconds) * time.Second).String())
	if s.Model != "" {
		fmt.Fprintf(out, "  model %s", s.Model)
	}
	fmt.Fprintf(out, "\npool      %s, %s, blocks of %d tokens (%d bytes, %s K and V)\n", s.PoolKind, mib(s.PoolBytes), s.BlockSize, s.BlockBytes, s.KVCacheDType)
	pct := 0.0
	if s.BlocksTotal > 0 {
		pct = 100 * float64(s.BlocksUsed) / float64(s.BlocksTotal)
	}
	if g := s.GPU; g != nil {
		if g.Error != "" {
			fmt.Fprintf(out, "gpu       %s (no readings: %s)\n", g.Name, g.Error)
		} else {
			fmt.Fprintf(out, "gpu       %s, %s used of %s, %.0f%% busy, %d°C\n", g.Name, mib(int64(g.MemoryUsedBytes)), mib(int64(g.MemoryTotalBytes)), 100*g.Utilization, g.TemperatureC)
		}
	}
	fmt.Fprintf(out, "blocks    %d used of %d (%.1f%%), %d free\n", s.BlocksUsed, s.BlocksTotal, pct, s.BlocksFree)
	fmt.Fprintf(out, "clients   %d connected, %d sequences, %d steps\n", s.Clients, s.Sequences, s.Steps)
	fmt.Fprintf(out, "eviction  %d tokens evicted, %d blocks returned\n", s.TokensEvicted, s.BlocksReturned)
	if len(s.Leases) > 0 {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nCLIENT\tCONNECTED\tSEQUENCES\tGRACE LEFT")
		for _, l := range s.Leases {
			grace := "-"
			if !l.Connected {
				grace = fmt.Sprintf("%.1fs", l.GraceLeftSeconds)
			}
			fmt.Fprintf(tw, "%s\t%v\t%d\t%s\n", l.Name, l.Connected, l.Sequences, grace)
		}
		tw.Flush()
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nLAYER\tPOLICY\tBUDGET\tTOKENS\tBLOCKS\tCOMPRESSION\t")
	for _, l := range s.Layers {
		budget, ratio := "all", "-"
		if l.Budget > 0 {
			budget = fmt.Sprint(l.Budget)
		}
		if l.Compression > 0 {
			ratio = fmt.Sprintf("%.2fx", l.Compression)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t\n", l.Index, l.Policy, budget, l.TokensRetained, l.BlocksUsed, ratio)
	}
	tw.Flush()
}
