package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	writerapp "github.com/oneway-sync/oneway/services/writer/app"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/progress"
	"github.com/oneway-sync/oneway/shared/runner"
)

type replayOptions struct {
	cli.Flags
	store    storeFlags
	target   string
	into     string
	fromSeq  uint64
	since    string
	all      bool
	rebuild  bool
	shadow   bool
	progress io.Writer
}

func replayCommand() *cobra.Command {
	var o replayOptions
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Re-apply the stream's history to a target, to repair or rebuild it",
		Long: `replay re-applies the pipeline's changes kept in its stream — all of them
(--all), from a stream sequence (--from-seq) or from a time (--since) — to a
target, with a consumer of its own, while the live writers keep going. It
stops once it has applied everything the stream held when it began.

Every change is fenced as usual: one older than what the target has applied
is skipped. So after a target lost rows (truncated, restored from an old
backup) pass --rebuild: it clears the target's ledger first, and every
replayed change is written (PostgreSQL and SQLite targets). --into names
another target of the config to replay into, e.g. a fresh one.

--shadow (PostgreSQL targets, direct mode) rebuilds into a shadow table
instead: <table>_oneway_shadow, created LIKE the target table (columns,
defaults, constraints, indexes), with a ledger of its own, so every
replayed change is written there while the live writers keep applying to
the live table. Once the shadow has caught up with the stream, one
transaction locks the live ledger and table, applies what is left, and
renames the shadow into place: readers see the old table until then and
the rebuilt one after, never a half-built one. What only the live table
knows is kept: rows of keys the replay never saw (orphans, keys whose
history the stream no longer holds, rows a soft or none delete policy
keeps) are carried over as they are, with their ledger rows, and target-only columns (those the source does not own)
are copied from the live table for keys present in both; a row the target
had lost is back with its target-only columns at their defaults. The
table's GRANTs (and owner, when the replaying role may) are kept; triggers,
policies, publications and the table's own foreign keys are not carried
over; a view or another table's foreign key that references it
makes the swap fail and leaves the table as it was. While a long
transaction holds the table, the swap's lock is given up after 10 s and
asked for again, with a warning. Run one --shadow replay per target at a time.

How far back it can go is the stream's retention (nats.max_age,
nats.max_bytes); beyond it, "oneway resync" re-reads the source instead.
With an embedded NATS server either stop "oneway up" first or start it with
--nats-port P and pass --nats-url nats://127.0.0.1:P.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.Load()
			if err != nil {
				return err
			}
			log, err := o.Logger("oneway")
			if err != nil {
				return err
			}
			o.progress = cmd.ErrOrStderr()
			ctx, stop := runner.SignalContext(cmd.Context())
			defer stop()
			return runReplay(ctx, cfg, o, cmd.OutOrStdout(), log.With("pipeline", cfg.Pipeline))
		},
	}
	o.Bind(cmd)
	o.store.bind(cmd)
	cmd.Flags().StringVar(&o.target, "target", "", "target whose changes to replay (required)")
	cmd.Flags().StringVar(&o.into, "into", "", "replay into this target of the config instead (default: --target)")
	cmd.Flags().Uint64Var(&o.fromSeq, "from-seq", 0, "start at this stream sequence")
	cmd.Flags().StringVar(&o.since, "since", "", "start at this time (RFC 3339, e.g. 2026-11-27T10:00:00Z)")
	cmd.Flags().BoolVar(&o.all, "all", false, "replay everything the stream holds")
	cmd.Flags().BoolVar(&o.rebuild, "rebuild", false, "clear the target's ledger first, so every replayed change is written")
	cmd.Flags().BoolVar(&o.shadow, "shadow", false, "rebuild into a shadow table and swap it in atomically at the end (postgres targets)")
	return cmd
}

func runReplay(ctx context.Context, cfg *config.Pipeline, o replayOptions, out io.Writer, log *slog.Logger) error {
	var from writerapp.ReplayFrom
	starts := 0
	if o.all {
		starts++
	}
	if o.fromSeq > 0 {
		starts++
		from.Seq = o.fromSeq
	}
	if o.since != "" {
		starts++
		t, err := time.Parse(time.RFC3339, o.since)
		if err != nil {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("--since %q: want RFC 3339 (2026-11-27T10:00:00Z): %w", o.since, err))
		}
		from.Since = t
	}
	if starts != 1 {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("give exactly one of --all, --from-seq N and --since TIME"))
	}
	if o.target == "" {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("--target is required"))
	}
	if _, ok := cfg.Target(o.target); !ok {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, o.target))
	}
	dest := o.target
	if o.into != "" {
		if _, ok := cfg.Target(o.into); !ok {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("--into: pipeline %s has no target %q", cfg.Pipeline, o.into))
		}
		dest = o.into
	}
	if o.shadow {
		if o.rebuild {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("--shadow and --rebuild exclude each other: a shadow has a fresh ledger of its own"))
		}
		t, _ := cfg.Target(dest)
		if t.Kind != config.KindPostgres {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("--shadow: target %s is %s; only postgres targets have a shadow", dest, t.Kind))
		}
		if cfg.Staged() {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("--shadow: pipeline %s is in staged mode, where the differ repairs targets itself", cfg.Pipeline))
		}
	}
	b, closeBus, err := o.store.connect(ctx, cfg, "oneway-replay", log)
	if err != nil {
		return err
	}
	defer closeBus()
	w, err := writerapp.New(cfg, dest, b, log, nil)
	if err != nil {
		return err
	}
	start := time.Now()
	show, finish := progressPrinter(o.progress, dest, log)
	if o.shadow {
		st, err := w.ReplayShadow(ctx, from, show)
		finish()
		if err != nil {
			return err
		}
		if st.Empty {
			fmt.Fprintf(out, "nothing to replay into target %s: the table was left as it was\n", dest)
			return nil
		}
		fmt.Fprintf(out, "replayed into a shadow of target %s and swapped it in in %s: %d rows carried over (orphans, keys outside the replay), target-only columns [%s] kept on %d rows\n",
			dest, time.Since(start).Round(time.Millisecond), st.CarriedRows, strings.Join(st.TargetOnlyColumns, ", "), st.TargetOnlyRows)
		return nil
	}
	err = w.Replay(ctx, from, o.rebuild, show)
	finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "replayed into target %s in %s\n", dest, time.Since(start).Round(time.Millisecond))
	return nil
}

// progressPrinter shows a replay's progress (see package progress): a bar
// on a terminal (done/total, msg/s, ETA), a log line every 5 s otherwise.
// finish ends it.
func progressPrinter(w io.Writer, target string, log *slog.Logger) (show func(writerapp.ReplayProgress), finish func()) {
	r := progress.New(progress.Options{Work: "replay " + target, Unit: "messages", Terminal: w, Log: log, Attrs: []any{"target", target}})
	var total uint64
	return func(p writerapp.ReplayProgress) {
		if p.Total != total {
			total = p.Total
			r.SetTotal(int64(total))
		}
		r.Set(int64(p.Done))
	}, r.Finish
}
