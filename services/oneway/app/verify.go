package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/services/oneway/internal/verify"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

func verifyCommand() *cobra.Command {
	var f cli.Flags
	var target string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare the SoR with each target by key over owned fields",
		Long: `verify reads the source and each target in key order and compares the owned
columns of every record. It exits 0 when every target matches, and 1 with a
summary (missing, different and extra keys, with samples) otherwise. Extra
target keys (orphans) count as a difference only when the target's orphan
policy is "delete".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.Load()
			if err != nil {
				return err
			}
			log, err := f.Logger("oneway")
			if err != nil {
				return err
			}
			return runVerify(cmd.Context(), cfg, target, cmd.OutOrStdout(), log)
		},
	}
	f.Bind(cmd)
	cmd.Flags().StringVar(&target, "target", "", "verify only this target (default: all)")
	return cmd
}

func runVerify(ctx context.Context, cfg *config.Pipeline, only string, out io.Writer, log *slog.Logger) error {
	schema, table, err := config.SplitTable(cfg.Source.Table)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	src, err := pgconn.Open(ctx, cfg.Source.URL.Value(), "oneway-verify", 2)
	if err != nil {
		return err
	}
	defer src.Close()
	srcTable := pgconn.Table{Schema: schema, Name: table}
	columns := cfg.Source.Columns
	if len(columns) == 0 {
		cols, found, err := pgconn.Columns(ctx, src, srcTable)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("source table %s does not exist", srcTable)
		}
		for _, c := range cols {
			columns = append(columns, c.Name)
		}
	}
	failed := false
	matched := 0
	for _, t := range cfg.Targets {
		if only != "" && t.Name != only {
			continue
		}
		matched++
		if t.Kind != config.KindPostgres {
			fmt.Fprintf(out, "target %s (%s): skipped: a %s target cannot be read back yet\n", t.Name, t.Kind, t.Kind)
			continue
		}
		ts, tt, err := config.SplitTable(t.Table)
		if err != nil {
			return cli.Exit(cli.ExitUsage, err)
		}
		dst, err := pgconn.Open(ctx, t.URL.Value(), "oneway-verify", 2)
		if err != nil {
			return err
		}
		start := time.Now()
		last := start
		rep, err := verify.Run(ctx, src, dst, verify.Spec{
			Source: srcTable, Target: pgconn.Table{Schema: ts, Name: tt},
			Key: cfg.Source.Key, Columns: columns,
			SoftDeleteColumn: cfg.Source.Capture.DeleteFeed.SoftDeleteColumn,
		}, func(done int64) {
			if time.Since(last) > 5*time.Second {
				last = time.Now()
				log.Info("verify progress", "target", t.Name, "rows", done,
					"rows_per_s", int(float64(done)/time.Since(start).Seconds()))
			}
		})
		dst.Close()
		if err != nil {
			return err
		}
		orphansCount := t.Orphans == "delete"
		ok := rep.Equal(orphansCount)
		status := "OK"
		if !ok {
			status = "DIFFERENT"
			failed = true
		}
		fmt.Fprintf(out, "target %s (%s): %s  source_rows=%d target_rows=%d missing=%d different=%d extra=%d (orphans %s)\n",
			t.Name, t.Table, status, rep.SourceRows, rep.TargetRows, rep.Missing, rep.Different, rep.Extra, orphanNote(t.Orphans))
		for _, s := range []struct {
			what string
			keys []string
		}{{"missing", rep.MissingKeys}, {"different", rep.DifferentKeys}, {"extra", rep.ExtraKeys}} {
			if len(s.keys) > 0 {
				fmt.Fprintf(out, "  %s keys (sample): %s\n", s.what, strings.Join(s.keys, ", "))
			}
		}
	}
	if matched == 0 {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, only))
	}
	if failed {
		return cli.Exit(cli.ExitFailure, errors.New("targets differ from the source"))
	}
	return nil
}

func orphanNote(policy string) string {
	if policy == "delete" {
		return "policy delete: extras count"
	}
	return "policy " + policy + ": extras are kept"
}
