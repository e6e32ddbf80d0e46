package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/oneway/internal/verify"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/progress"
	"github.com/oneway-sync/oneway/shared/recordsource"
	"github.com/oneway-sync/oneway/shared/source"
	"github.com/oneway-sync/oneway/shared/sqlsource"
)

func verifyCommand() *cobra.Command {
	var f cli.Flags
	var target string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Compare the SoR with each target by key over owned fields",
		Long: `verify reads the source and each target in key order and compares the owned
columns of every record. PostgreSQL targets are read in key order directly;
SQLite tables, JSONL files, NATS JetStream streams and Kafka topics are first
folded to their final state per key (the highest version wins, a delete or
tombstone removes the key) into a temporary SQLite database under $TMPDIR.
HTTP targets are skipped: an API has no read-back yet. It exits 0 when every
target matches, and 1 with a summary (missing, different and extra keys,
with samples) otherwise. Extra target keys (orphans) count as a difference
only when the target's orphan policy is "delete".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfgs, err := f.LoadAll()
			if err != nil {
				return err
			}
			log, err := f.Logger("oneway")
			if err != nil {
				return err
			}
			if len(cfgs) == 1 {
				return runVerify(cmd.Context(), cfgs[0], target, cmd.OutOrStdout(), cmd.ErrOrStderr(), log)
			}
			return verifyAll(cmd.Context(), cfgs, target, cmd.OutOrStdout(), cmd.ErrOrStderr(), log)
		},
	}
	f.Bind(cmd)
	cmd.Flags().StringVar(&target, "target", "", "verify only this target (default: all)")
	return cmd
}

// verifyAll verifies each pipeline of a config listing several tables,
// one after the other, and fails (exit 1) when any differs; a pipeline
// that cannot be verified stops it.
func verifyAll(ctx context.Context, cfgs []*config.Pipeline, only string, out, term io.Writer, log *slog.Logger) error {
	var differ []string
	for _, cfg := range cfgs {
		fmt.Fprintf(out, "pipeline %s (table %s):\n", cfg.Pipeline, cfg.Source.Table)
		err := runVerify(ctx, cfg, only, out, term, log.With("pipeline", cfg.Pipeline))
		var ee *cli.ExitError
		if errors.As(err, &ee) && ee.Code == cli.ExitFailure {
			differ = append(differ, cfg.Pipeline)
			continue
		}
		if err != nil {
			return fmt.Errorf("verify pipeline %s: %w", cfg.Pipeline, err)
		}
	}
	if len(differ) > 0 {
		return cli.Exit(cli.ExitFailure, fmt.Errorf("targets differ from the source in %d of %d pipelines: %s", len(differ), len(cfgs), strings.Join(differ, ", ")))
	}
	fmt.Fprintf(out, "all %d pipelines match\n", len(cfgs))
	return nil
}

// runVerify compares the source with each target (or only one), printing
// the results to out and the progress to term (a bar when it is a
// terminal, else log lines).
func runVerify(ctx context.Context, cfg *config.Pipeline, only string, out, term io.Writer, log *slog.Logger) error {
	if cfg.Source.Kind == config.KindSQLite || cfg.Source.Kind == config.KindMySQL || config.IsRecordSource(cfg.Source.Kind) {
		var src scannedSource
		if config.IsRecordSource(cfg.Source.Kind) {
			// The reader's own code: the same listing, types and values.
			rs, err := recordsource.Open(cfg.Source, log)
			if err != nil {
				return err
			}
			defer rs.Close()
			src = rs
		} else {
			spec, err := sqlSourceSpec(cfg)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			ss, err := sqlsource.Open(ctx, spec, log)
			if err != nil {
				return err
			}
			defer ss.Close()
			src = ss
		}
		cols := make([]verify.Column, 0, len(src.Columns()))
		for _, c := range src.Columns() {
			cols = append(cols, verify.Column{Name: c.GetName(), Type: c.GetType()})
		}
		layout, err := verify.NewLayout(cols, cfg.Source.Key)
		if err != nil {
			return cli.Exit(cli.ExitUsage, err)
		}
		openSource := func(progress func(int64)) (verify.Side, error) {
			return verify.Fold(ctx, layout, "", scanSQLSource(src), progress)
		}
		return verifyTargets(ctx, cfg, only, out, term, log, layout, openSource, nil)
	}
	if cfg.Source.Kind != config.KindPostgres {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("verify reads the source table back and needs a postgres, sqlite, mysql, csv, jsonl or http source; a %s source has no read-back (query the targets, or verify against the database the events come from)", cfg.Source.Kind))
	}
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
	all, found, err := pgconn.Columns(ctx, src, srcTable)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("source table %s does not exist", srcTable)
	}
	names := cfg.Source.Columns
	if len(names) == 0 {
		for _, c := range all {
			names = append(names, c.Name)
		}
	}
	owned, err := pgconn.Pick(srcTable, all, names)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	cols := make([]verify.Column, len(owned))
	for i, c := range owned {
		cols[i] = verify.Column{Name: c.Name, Type: c.Type}
	}
	layout, err := verify.NewLayout(cols, cfg.Source.Key)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	openSource := func(func(int64)) (verify.Side, error) {
		return verify.OpenPostgresLive(ctx, src, srcTable, layout, cfg.Source.Capture.DeleteFeed.SoftDeleteColumn)
	}
	// The source's row estimate (pg_class.reltuples) gives the compare an
	// ETA; 0 when never analysed.
	estimate := func() (int64, error) {
		var n int64
		if err := src.QueryRow(ctx, "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)", srcTable.Quoted()).Scan(&n); err != nil {
			return 0, fmt.Errorf("estimate the rows of %s: %w", srcTable, err)
		}
		return n, nil
	}
	return verifyTargets(ctx, cfg, only, out, term, log, layout, openSource, estimate)
}

// verifyTargets compares each target (or only the one named) with the
// source side that openSource opens (once per target), showing progress on
// term. estimate, when set, guesses the source's rows for an ETA.
func verifyTargets(ctx context.Context, cfg *config.Pipeline, only string, out, term io.Writer, log *slog.Logger,
	layout *verify.Layout, openSource func(progress func(int64)) (verify.Side, error), estimate func() (int64, error)) error {
	failed := false
	matched := 0
	for _, t := range cfg.Targets {
		if only != "" && t.Name != only {
			continue
		}
		matched++
		var total int64
		if estimate != nil {
			var err error
			if total, err = estimate(); err != nil {
				return err
			}
		}
		reading := progress.New(progress.Options{Work: "verify " + t.Name + ": read target", Unit: "rows",
			Terminal: term, Log: log, Attrs: []any{"target", t.Name}})
		dst, what, err := verify.OpenTarget(ctx, verify.TargetSpec{
			Pipeline: cfg.Pipeline, Target: t, Layout: layout, Progress: reading.Set,
		})
		reading.Finish()
		var skip *verify.SkipError
		if errors.As(err, &skip) {
			fmt.Fprintf(out, "target %s (%s): skipped: %s\n", t.Name, t.Kind, skip.Reason)
			continue
		}
		if err != nil {
			return err
		}
		sourcing := progress.New(progress.Options{Work: "verify " + t.Name + ": read source", Unit: "rows",
			Terminal: term, Log: log, Attrs: []any{"target", t.Name}})
		comparing := progress.New(progress.Options{Work: "verify " + t.Name + ": compare", Unit: "source rows",
			Total: total, Terminal: term, Log: log, Attrs: []any{"target", t.Name}})
		rep, err := compare(ctx, openSource, dst, sourcing.Set, comparing.Set)
		sourcing.Finish()
		comparing.Finish()
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
			t.Name, what, status, rep.SourceRows, rep.TargetRows, rep.Missing, rep.Different, rep.Extra, orphanNote(t.Orphans))
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

// compare reads the source in key order against dst, and closes dst.
// Source rows marked deleted by the soft-delete column (the source's
// delete feed) are left out.
func compare(ctx context.Context, openSource func(func(int64)) (verify.Side, error), dst verify.Side, readProgress, progress func(int64)) (verify.Report, error) {
	s, err := openSource(readProgress)
	if err != nil {
		return verify.Report{}, errors.Join(fmt.Errorf("source: %w", err), dst.Close())
	}
	rep, err := verify.Compare(ctx, s, dst, verify.Options{Progress: progress})
	return rep, errors.Join(err, s.Close(), dst.Close())
}

// sqlSourceSpec is what verify reads of a sqlite or mysql source: the
// owned columns and the soft-delete mark.
func sqlSourceSpec(cfg *config.Pipeline) (sqlsource.Spec, error) {
	src := cfg.Source
	spec := sqlsource.Spec{Kind: src.Kind, URL: src.URL.Value(), Key: src.Key, Columns: src.Columns,
		SoftDeleteColumn: src.Capture.DeleteFeed.SoftDeleteColumn}
	var err error
	if src.Kind == config.KindMySQL {
		spec.Database, spec.Table, err = config.SplitMySQLTable(src.Table)
	} else {
		_, spec.Table, err = config.SplitTable(src.Table)
	}
	return spec, err
}

// scannedSource is a source verify reads with the reader's own Scan:
// sqlsource (sqlite, mysql) and recordsource (csv, jsonl, http).
type scannedSource interface {
	Columns() []*onewayv1.Column
	Scan(ctx context.Context, o source.ScanOptions) (source.Scan, error)
	IsDeleted(r source.Row) bool
	Owned(r source.Row) source.Row
}

// scanSQLSource reads every live row of a sqlite, mysql, csv, jsonl or
// http source, in the text the reader publishes.
func scanSQLSource(src scannedSource) verify.Scan {
	return func(ctx context.Context, emit func(verify.Change) error) error {
		sc, err := src.Scan(ctx, source.ScanOptions{})
		if err != nil {
			return err
		}
		defer sc.Close()
		for {
			r, ok := sc.Next()
			if !ok {
				return sc.Err()
			}
			if src.IsDeleted(r) {
				continue
			}
			if err := emit(verify.Change{Row: src.Owned(r)}); err != nil {
				return err
			}
		}
	}
}

func orphanNote(policy string) string {
	if policy == "delete" {
		return "policy delete: extras count"
	}
	return "policy " + policy + ": extras are kept"
}
