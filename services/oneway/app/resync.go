package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	readerapp "github.com/oneway-sync/oneway/services/reader/app"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/runner"
)

func resyncCommand() *cobra.Command {
	var f cli.Flags
	var store storeFlags
	cmd := &cobra.Command{
		Use:   "resync",
		Short: "Make the next start read the whole source again",
		Long: `resync clears the reader's saved position and its capture state (the hash
lists of synthetic and window, the overlap hashes of watermark_cdc), so the
next start of the pipeline reads the source from the start: a snapshot, or a
first cycle without a hash list. For the cdc pattern (or a pipeline switched
away from it) it also drops the replication slot on the source, so the next
start takes a new snapshot with a new slot; run it after a TRUNCATE of the
source table or when the slot was lost. Use it after restoring the source from a
backup, after changing the table or key, or whenever you want a full pass.

Targets are not touched, and a full pass does not rewrite them: the
writers' ledger skips every row whose content they already applied. The
reader logs the pass's progress ("progress", work=snapshot: rows published,
rate and ETA against the table's row estimate) every 5 s.

It is also how to rebuild a target once the stream no longer holds its
history (nats.max_age, nats.max_bytes): resync, then "replay --shadow" or
"replay --rebuild" replays the new snapshot.

It refuses while a reader of the pipeline runs (it holds the reader lease
itself while it works). With an embedded NATS server (no nats.url) stop
'oneway up' first; otherwise pass --nats-url or rely on the config's.`,
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
			log = log.With("pipeline", cfg.Pipeline)
			ctx, stop := runner.SignalContext(cmd.Context())
			defer stop()
			return runResync(ctx, cfg, store, cmd.OutOrStdout(), log)
		},
	}
	f.Bind(cmd)
	store.bind(cmd)
	return cmd
}

func runResync(ctx context.Context, cfg *config.Pipeline, store storeFlags, out io.Writer, log *slog.Logger) error {
	b, closeBus, err := store.connect(ctx, cfg, "oneway-resync", log)
	if err != nil {
		return err
	}
	defer closeBus()
	rep, err := readerapp.Resync(ctx, b, cfg, log)
	if errors.Is(err, readerapp.ErrReaderActive) {
		return cli.Exit(cli.ExitFailure, fmt.Errorf("pipeline %s: %w", cfg.Pipeline, err))
	}
	if err != nil {
		return err
	}
	if rep.Position == nil {
		fmt.Fprintf(out, "pipeline %s: no saved reader position\n", cfg.Pipeline)
	} else {
		p := rep.Position
		pattern := p.Pattern
		if pattern == "" {
			pattern = config.PatternWatermark
		}
		fmt.Fprintf(out, "pipeline %s: cleared the reader position (pattern %s, phase %s", cfg.Pipeline, pattern, p.Phase)
		switch {
		case p.Phase == "watermark":
			fmt.Fprintf(out, ", watermark %s", p.Watermark)
		case p.Cycle > 0:
			fmt.Fprintf(out, ", cycle %d", p.Cycle)
		case p.LSN != "":
			fmt.Fprintf(out, ", LSN %s", p.LSN)
		}
		fmt.Fprintln(out, ")")
	}
	for _, o := range rep.Objects {
		fmt.Fprintf(out, "pipeline %s: deleted capture state %s\n", cfg.Pipeline, o)
	}
	for _, s := range rep.Slots {
		fmt.Fprintf(out, "pipeline %s: dropped replication slot %s on the source\n", cfg.Pipeline, s)
	}
	fmt.Fprintf(out, "pipeline %s: the next start reads the source from the start (pattern %s); targets keep their rows, and the writers skip what they already have\n",
		cfg.Pipeline, cfg.Source.Capture.Pattern)
	return nil
}
