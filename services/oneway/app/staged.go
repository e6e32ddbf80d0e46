package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	differapp "github.com/oneway-sync/oneway/services/differ/app"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/stagedb"
)

// stageOptions are the flags of the commands that open the stage.
type stageOptions struct {
	cli.Flags
	dataDir string
	target  string
}

func (o *stageOptions) bind(cmd *cobra.Command) {
	o.Bind(cmd)
	cmd.Flags().StringVar(&o.dataDir, "data-dir", "./data", "data directory of `oneway up`, for a pipeline with the embedded stage (no stage.url)")
}

// open loads the config, checks it is staged and opens its stage.
func (o *stageOptions) open(ctx context.Context) (*config.Pipeline, stage.Store, error) {
	cfg, err := o.Load()
	if err != nil {
		return nil, nil, err
	}
	if !cfg.Staged() {
		return nil, nil, cli.Exit(cli.ExitUsage, errors.New(cfg.File+": mode: the pipeline is not in staged mode (mode: staged)"))
	}
	if o.target != "" {
		if _, ok := cfg.Target(o.target); !ok {
			return nil, nil, cli.Exit(cli.ExitUsage, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, o.target))
		}
	}
	if cfg.Stage.URL.Value() == "" {
		if _, err := os.Stat(stagedb.Dir(o.dataDir)); err != nil {
			return nil, nil, cli.Exit(cli.ExitUsage, fmt.Errorf("no embedded stage under --data-dir %s (%v): pass the data directory of `oneway up`", o.dataDir, err))
		}
	}
	store, err := stagedb.Open(ctx, cfg, o.dataDir, 2)
	if err != nil {
		return nil, nil, fmt.Errorf("open the stage: %w", err)
	}
	return cfg, store, nil
}

func diffCommand() *cobra.Command {
	var o stageOptions
	var dryRun, scan bool
	var natsURL string
	var samples int
	cmd := &cobra.Command{
		Use:   "diff",
		Short: "Show what the next push would do (--dry-run), or ask the differ for a full scan (--scan)",
		Long: `diff works on a staged pipeline.

--dry-run joins every key of the stage, as the differ does, and prints per
target what the next push would do: counts per action (insert, update,
delete, orphan_delete, orphan_report, …), a sample of keys for each, keys
the push cap stopped ("stuck"), and whether the mass-delete breaker holds
or would hold the deletes. It changes nothing. It reads the stage (with the
embedded stage, the SQLite file under --data-dir, which it may read while
'oneway up' runs) and the source's column types.

--scan asks the running differ to join every key now (on the config's
nats.url, or --nats-url), rather than at its next scheduled scan.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dryRun == scan {
				return cli.Exit(cli.ExitUsage, errors.New("pass --dry-run (print the next push) or --scan (ask the differ for a full scan)"))
			}
			if scan {
				return requestScan(cmd.Context(), &o, natsURL, cmd.OutOrStdout())
			}
			return runDryRun(cmd.Context(), &o, samples, cmd.OutOrStdout())
		},
	}
	o.bind(cmd)
	cmd.Flags().StringVar(&o.target, "target", "", "only this target (default: all)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what the next push would do, change nothing")
	cmd.Flags().BoolVar(&scan, "scan", false, "ask the running differ for a full scan now")
	cmd.Flags().StringVar(&natsURL, "nats-url", "", "NATS server of the running pipeline, for --scan (default: the config's nats.url)")
	cmd.Flags().IntVar(&samples, "samples", 10, "keys to print per action")
	return cmd
}

func runDryRun(ctx context.Context, o *stageOptions, samples int, out io.Writer) error {
	cfg, store, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	cols, err := sourceColumns(ctx, cfg)
	if err != nil {
		return err
	}
	for _, t := range cfg.Targets {
		if o.target != "" && t.Name != o.target {
			continue
		}
		p, err := differapp.DryRun(ctx, cfg, store, cols, t.Name, samples)
		if err != nil {
			return err
		}
		printPlan(out, cfg, p)
	}
	return nil
}

// sourceColumns are the owned columns with the source's types, in stage
// order (as the stager saves them for the differ).
func sourceColumns(ctx context.Context, cfg *config.Pipeline) ([]*onewayv1.Column, error) {
	schema, table, err := config.SplitTable(cfg.Source.Table)
	if err != nil {
		return nil, cli.Exit(cli.ExitUsage, err)
	}
	src, err := pgconn.Open(ctx, cfg.Source.URL.Value(), "oneway-diff", 1)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	t := pgconn.Table{Schema: schema, Name: table}
	have, found, err := pgconn.Columns(ctx, src, t)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("source table %s does not exist", t)
	}
	types := map[string]string{}
	for _, c := range have {
		types[c.Name] = c.Type
	}
	layout := stage.LayoutOf(cfg)
	isKey := map[int]bool{}
	for _, k := range layout.Key {
		isKey[k] = true
	}
	cols := make([]*onewayv1.Column, len(layout.Columns))
	for i, name := range layout.Columns {
		typ, ok := types[name]
		if !ok {
			return nil, fmt.Errorf("source table %s has no column %q (source.columns)", t, name)
		}
		cols[i] = &onewayv1.Column{Name: name, Type: typ, Key: isKey[i]}
	}
	return cols, nil
}

func printPlan(out io.Writer, cfg *config.Pipeline, p differapp.Plan) {
	var parts []string
	for _, a := range []string{"insert", "update", "delete", "orphan_delete", "orphan_report", "orphan_kept", "kept_deleted", "delete_skipped", "stuck", "unchanged"} {
		parts = append(parts, fmt.Sprintf("%s=%d", a, p.Counts[a]))
	}
	fmt.Fprintf(out, "target %s: %d records staged; next push: %s\n", p.Target, p.Total, strings.Join(parts, " "))
	for _, a := range []string{"insert", "update", "delete", "orphan_delete", "orphan_report", "kept_deleted", "delete_skipped", "stuck"} {
		if keys := p.Samples[a]; len(keys) > 0 {
			fmt.Fprintf(out, "  %s keys (sample): %s\n", a, strings.Join(keys, ", "))
		}
	}
	approve := fmt.Sprintf("oneway approve --config %s --target %s", cfg.File, p.Target)
	switch p.Breaker {
	case "off":
		fmt.Fprintf(out, "  breaker: off (allow: true)\n")
	case "approved":
		fmt.Fprintf(out, "  breaker: approved by %s at %s: the differ deletes %d records\n", p.Hold.ApprovedBy, p.Hold.ApprovedAt.Format(time.RFC3339), p.Deletes)
	case "held":
		fmt.Fprintf(out, "  breaker: HELD since %s: %d deletes of %d records (limit %d); approve with `%s`\n",
			p.Hold.HeldAt.Format(time.RFC3339), p.Deletes, p.Total, p.Limit, approve)
	case "would hold":
		fmt.Fprintf(out, "  breaker: would hold %d deletes of %d records (limit %d); approve with `%s` once held\n", p.Deletes, p.Total, p.Limit, approve)
	default:
		fmt.Fprintf(out, "  breaker: ok (%d deletes, limit %d)\n", p.Deletes, p.Limit)
	}
}

// requestScan publishes a full-scan request on the staged subject.
func requestScan(ctx context.Context, o *stageOptions, natsURL string, out io.Writer) error {
	cfg, err := o.Load()
	if err != nil {
		return err
	}
	if !cfg.Staged() {
		return cli.Exit(cli.ExitUsage, errors.New(cfg.File+": mode: the pipeline is not in staged mode (mode: staged)"))
	}
	if natsURL == "" {
		natsURL = cfg.NATS.URL.Value()
	}
	if natsURL == "" {
		return cli.Exit(cli.ExitUsage, errors.New("--scan needs the running pipeline's NATS server: set nats.url, or start `oneway up` with --nats-port P and pass --nats-url nats://127.0.0.1:P"))
	}
	log, err := o.Logger("oneway")
	if err != nil {
		return err
	}
	b, err := natsbus.Connect(ctx, natsURL, "oneway-diff", log, natsbus.AuthOptions(cfg.NATS.NATSAuth)...)
	if err != nil {
		return err
	}
	defer b.Close()
	side := string(stage.SourceSide)
	if o.target != "" {
		if _, ok := cfg.Target(o.target); !ok {
			return cli.Exit(cli.ExitUsage, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, o.target))
		}
		side = string(stage.TargetSide(o.target))
	}
	data, err := proto.Marshal(&onewayv1.Staged{SchemaVersion: event.SchemaVersion, Pipeline: cfg.Pipeline, Side: side, FullScan: true})
	if err != nil {
		return err
	}
	if _, err := b.JS.Publish(ctx, bus.StagedSubject(cfg.Pipeline), data); err != nil {
		return fmt.Errorf("request a scan: %w", err)
	}
	fmt.Fprintf(out, "scan requested (%s)\n", side)
	return nil
}

func approveCommand() *cobra.Command {
	var o stageOptions
	var by string
	cmd := &cobra.Command{
		Use:   "approve",
		Short: "Approve the deletes the mass-delete breaker holds for a target",
		Long: `approve lets the differ push the deletes that the mass-delete breaker holds
for --target (a diff that would delete more than breaker.max_delete_share of
the target's records). The running differ sees the approval within seconds,
pushes the deletes pending then, and releases the hold; the breaker is armed
again for what comes after. See what is held with 'oneway diff --dry-run'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.target == "" {
				return cli.Exit(cli.ExitUsage, errors.New("--target is required"))
			}
			if by == "" {
				by = approver()
			}
			if err := stage.ValidateApprover(by); err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			cfg, store, err := o.open(cmd.Context())
			if err != nil {
				return err
			}
			defer store.Close()
			h, err := store.Approve(cmd.Context(), o.target, by)
			if errors.Is(err, stage.ErrNoHold) {
				return cli.Exit(cli.ExitFailure, fmt.Errorf("target %s of pipeline %s has no held deletes", o.target, cfg.Pipeline))
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "target %s: approved by %s: %d deletes of %d records (held since %s); the differ pushes them within seconds\n",
				h.Target, h.ApprovedBy, h.Deletes, h.Total, h.HeldAt.Format(time.RFC3339))
			return nil
		},
	}
	o.bind(cmd)
	cmd.Flags().StringVar(&o.target, "target", "", "the target whose held deletes to approve (required)")
	cmd.Flags().StringVar(&by, "by", "", "who approves, recorded with the approval (default: user@host)")
	return cmd
}

// approver names the operator: user@host.
func approver() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}
