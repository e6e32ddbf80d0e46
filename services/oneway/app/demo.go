package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/services/oneway/internal/demo"
	"github.com/oneway-sync/oneway/services/oneway/internal/status"
	"github.com/oneway-sync/oneway/shared/cli"
)

// runDemo is `oneway up` with no config: it prepares the demo directory
// under --data-dir (config, seeded SoR, target table), then runs the demo's
// config like any other, with the simulator beside the pipeline and the
// direct comparison on the status page. The banner is printed to out once
// the status page listens.
func runDemo(ctx context.Context, o upOptions, log *slog.Logger, out io.Writer) error {
	d, err := demo.Prepare(ctx, o.dataDir)
	if err != nil {
		return fmt.Errorf("prepare the demo: %w", err)
	}
	o.ConfigPath = d.ConfigPath
	cfg, err := o.Load()
	if err != nil {
		return err
	}
	log.Info("demo prepared", "dir", d.Dir, "seeded", d.Seeded, "config", d.ConfigPath)
	o.extra = append(o.extra, d.NewSimulator(o.demoEvery, o.demoBurst, log.With("pipeline", cfg.Pipeline)))
	o.compare = func(ctx context.Context) (status.Comparison, error) {
		c, err := d.Compare(ctx)
		return status.Comparison{SourceRows: c.SourceRows, Target: demo.TargetName, TargetRows: c.TargetRows, OutOfStep: c.OutOfStep}, err
	}
	o.started = func(statusURL string) {
		if statusURL == "" {
			statusURL = "(off: --admin-addr off)"
		}
		d.Banner(out, statusURL)
	}
	return runUp(ctx, cfg, o, log)
}

// demoCommand holds what goes with the demo beside `oneway up`.
func demoCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The built-in demo (run it with `oneway up` and no config)",
		Args:  cobra.NoArgs,
	}
	var dataDir string
	var rows int
	tamper := &cobra.Command{
		Use:   "tamper",
		Short: "Edit the demo's target by hand: delete a few rows and change a few others",
		Long: `tamper edits the demo's target (--data-dir/demo/target.db) as a person
might: it deletes --rows random rows and changes the customer of --rows
others, and prints their ids. A running demo reads the target back and
repairs both within seconds; watch "rows out of step" on the status page.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rows < 1 {
				return cli.Exit(cli.ExitUsage, fmt.Errorf("--rows must be >= 1, got %d", rows))
			}
			t, err := demo.Tamper(cmd.Context(), dataDir, rows)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted from the target: %v\nchanged in the target:   %v\n", t.Deleted, t.Changed)
			return nil
		},
	}
	tamper.Flags().StringVar(&dataDir, "data-dir", "./data", "the demo's data directory (as given to oneway up)")
	tamper.Flags().IntVar(&rows, "rows", 3, "how many rows to delete, and how many to change")
	cmd.AddCommand(tamper)
	return cmd
}
