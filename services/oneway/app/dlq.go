package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/oneway/internal/dlq"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/runner"
)

// dlqOptions are the flags every dlq verb shares.
type dlqOptions struct {
	cli.Flags
	storeFlags
}

func (o *dlqOptions) bind(cmd *cobra.Command) {
	o.Bind(cmd)
	o.storeFlags.bind(cmd)
}

func dlqCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List, show, retry or drop dead letters",
		Long: `dlq works on the dead letters of a pipeline: the changes a target rejected
(oneway.<pipeline>.dlq.<target> in the pipeline's stream).

retry re-drives them after the target was fixed, with their ORIGINAL version:
a change whose key changed since is skipped (the newer state wins), so a
retry never overwrites newer data. drop deletes them.

They use the config's nats.url, or --nats-url. With an embedded server (no
nats.url) they open the store under --data-dir themselves, which needs
'oneway up' stopped: a running 'oneway up' owns that store (or start it with
--nats-port and pass --nats-url nats://127.0.0.1:PORT).`,
	}
	cmd.AddCommand(dlqListCommand(), dlqShowCommand(), dlqRetryCommand(), dlqDropCommand())
	return cmd
}

func dlqListCommand() *cobra.Command {
	var o dlqOptions
	var target string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, with a total per target",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd, func(ctx context.Context, cfg *config.Pipeline, s *dlq.Store, _ *slog.Logger) error {
				if err := checkTarget(cfg, target, false); err != nil {
					return err
				}
				letters, err := s.List(ctx, target)
				if err != nil {
					return err
				}
				printList(cmd.OutOrStdout(), cfg, target, letters)
				return nil
			})
		},
	}
	o.bind(cmd)
	cmd.Flags().StringVar(&target, "target", "", "only this target's dead letters")
	return cmd
}

func dlqShowCommand() *cobra.Command {
	var o dlqOptions
	var seq uint64
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show one dead letter: headers and the decoded batch",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if seq == 0 {
				return cli.Exit(cli.ExitUsage, errors.New("--seq N is required (the SEQ column of `dlq list`)"))
			}
			return o.run(cmd, func(ctx context.Context, _ *config.Pipeline, s *dlq.Store, _ *slog.Logger) error {
				l, err := s.Get(ctx, seq)
				if err != nil {
					return notFound(err)
				}
				printLetter(cmd.OutOrStdout(), l)
				return nil
			})
		},
	}
	o.bind(cmd)
	cmd.Flags().Uint64Var(&seq, "seq", 0, "stream sequence of the dead letter")
	return cmd
}

// selection is --seq N or --all [--target T].
type selection struct {
	seq    uint64
	target string
	all    bool
}

func (sel *selection) bind(cmd *cobra.Command, verb string) {
	cmd.Flags().Uint64Var(&sel.seq, "seq", 0, verb+" the dead letter with this stream sequence")
	cmd.Flags().StringVar(&sel.target, "target", "", "with --all: only this target's dead letters")
	cmd.Flags().BoolVar(&sel.all, "all", false, verb+" every dead letter (of --target)")
}

func (sel *selection) check() error {
	switch {
	case sel.seq != 0 && (sel.all || sel.target != ""):
		return cli.Exit(cli.ExitUsage, errors.New("give either --seq N or --all [--target T], not both"))
	case sel.seq == 0 && !sel.all:
		return cli.Exit(cli.ExitUsage, errors.New("give --seq N, or --all [--target T]"))
	}
	return nil
}

func (sel *selection) letters(ctx context.Context, cfg *config.Pipeline, s *dlq.Store) ([]dlq.Letter, error) {
	if sel.seq != 0 {
		l, err := s.Get(ctx, sel.seq)
		if err != nil {
			return nil, notFound(err)
		}
		return []dlq.Letter{l}, nil
	}
	if err := checkTarget(cfg, sel.target, false); err != nil {
		return nil, err
	}
	return s.List(ctx, sel.target)
}

func dlqRetryCommand() *cobra.Command {
	var o dlqOptions
	var sel selection
	cmd := &cobra.Command{
		Use:   "retry",
		Short: "Re-drive dead letters to their target's writers, with their original version",
		Long: `retry publishes dead letters to oneway.<pipeline>.retry.<target>, which that
target's writers consume, then deletes them from the DLQ. Fix the cause
first (the target's constraint or schema): a change rejected again is
dead-lettered again.

A retried change is applied with the version of its original message: if
its key changed since, the newer state wins and the retry is a no-op. The
writers apply retries when they run ('oneway up' or 'writer run').`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sel.check(); err != nil {
				return err
			}
			return o.run(cmd, func(ctx context.Context, cfg *config.Pipeline, s *dlq.Store, log *slog.Logger) error {
				letters, err := sel.letters(ctx, cfg, s)
				if err != nil {
					return err
				}
				return retryLetters(ctx, cmd.OutOrStdout(), cfg, s, letters)
			})
		},
	}
	o.bind(cmd)
	sel.bind(cmd, "retry")
	return cmd
}

func retryLetters(ctx context.Context, out io.Writer, cfg *config.Pipeline, s *dlq.Store, letters []dlq.Letter) error {
	if len(letters) == 0 {
		fmt.Fprintln(out, "no dead letters to retry")
		return nil
	}
	checked := map[string]error{}
	failed := 0
	for _, l := range letters {
		err := checkTarget(cfg, l.Target, true)
		if err == nil {
			var ok bool
			if err, ok = checked[l.Target]; !ok {
				err = s.CheckConsumer(ctx, l.Target)
				checked[l.Target] = err
			}
		}
		var r dlq.Retried
		if err == nil {
			r, err = s.Retry(ctx, l)
		}
		if err != nil {
			failed++
			fmt.Fprintf(out, "NOT retried: dead letter %d (target %s, key %s): %v\n", l.Seq, l.Target, orDash(l.Key), err)
			continue
		}
		note := ""
		if r.Duplicate {
			note = " (already published by an earlier retry)"
		}
		fmt.Fprintf(out, "retried dead letter %d (target %s, key %s, original seq %d) as stream seq %d%s\n",
			l.Seq, l.Target, orDash(l.Key), r.OriginalSeq, r.RetrySeq, note)
	}
	fmt.Fprintf(out, "retried %d of %d dead letter(s); the writers apply them when they run\n", len(letters)-failed, len(letters))
	if failed > 0 {
		return cli.Exit(cli.ExitFailure, fmt.Errorf("%d dead letter(s) not retried", failed))
	}
	return nil
}

func dlqDropCommand() *cobra.Command {
	var o dlqOptions
	var sel selection
	var yes bool
	cmd := &cobra.Command{
		Use:   "drop",
		Short: "Delete dead letters",
		Long: `drop deletes dead letters for good: their changes will not reach the target
(unless the source changes the key again). It asks for confirmation on a
terminal; otherwise it needs --yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sel.check(); err != nil {
				return err
			}
			if !yes && !dlq.IsTerminal(os.Stdin) {
				return cli.Exit(cli.ExitUsage, errors.New("drop deletes dead letters for good: pass --yes (stdin is not a terminal to confirm on)"))
			}
			return o.run(cmd, func(ctx context.Context, cfg *config.Pipeline, s *dlq.Store, _ *slog.Logger) error {
				letters, err := sel.letters(ctx, cfg, s)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if len(letters) == 0 {
					fmt.Fprintln(out, "no dead letters to drop")
					return nil
				}
				if !yes {
					printList(cmd.ErrOrStderr(), cfg, sel.target, letters)
					ok, err := confirm(cmd.InOrStdin(), cmd.ErrOrStderr(), fmt.Sprintf("Drop these %d dead letter(s) for good? [y/N] ", len(letters)))
					if err != nil {
						return err
					}
					if !ok {
						return cli.Exit(cli.ExitFailure, errors.New("nothing dropped"))
					}
				}
				for _, l := range letters {
					if err := s.Drop(ctx, l.Seq); err != nil {
						return err
					}
					fmt.Fprintf(out, "dropped dead letter %d (target %s, key %s, original seq %s)\n", l.Seq, l.Target, orDash(l.Key), origText(cfg.Pipeline, l))
				}
				fmt.Fprintf(out, "dropped %d dead letter(s)\n", len(letters))
				return nil
			})
		},
	}
	o.bind(cmd)
	sel.bind(cmd, "drop")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func confirm(in io.Reader, out io.Writer, prompt string) (bool, error) {
	fmt.Fprint(out, prompt)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}

// run loads the config, connects (starting the embedded server when the
// pipeline has one), opens the pipeline's dead letters and calls fn.
func (o *dlqOptions) run(cmd *cobra.Command, fn func(ctx context.Context, cfg *config.Pipeline, s *dlq.Store, log *slog.Logger) error) error {
	cfg, err := o.Load()
	if err != nil {
		return err
	}
	log, err := o.Logger("oneway")
	if err != nil {
		return err
	}
	log = log.With("pipeline", cfg.Pipeline)
	ctx, stop := runner.SignalContext(cmd.Context())
	defer stop()
	b, closeBus, err := o.connect(ctx, cfg, "oneway-dlq", log)
	if err != nil {
		return err
	}
	defer closeBus()
	s, err := dlq.Open(ctx, b.JS, cfg.Pipeline)
	if err != nil {
		return err
	}
	return fn(ctx, cfg, s, log)
}

// checkTarget fails for a target the config does not name (when given, or
// when required).
func checkTarget(cfg *config.Pipeline, name string, required bool) error {
	if name == "" && !required {
		return nil
	}
	if _, ok := cfg.Target(name); !ok {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, name))
	}
	return nil
}

func notFound(err error) error {
	if errors.Is(err, dlq.ErrNotFound) {
		return cli.Exit(cli.ExitFailure, err)
	}
	return err
}

const errorWidth = 160

func printList(out io.Writer, cfg *config.Pipeline, only string, letters []dlq.Letter) {
	if len(letters) == 0 {
		fmt.Fprintln(out, "no dead letters")
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTARGET\tKEY\tORIGINAL_SEQ\tATTEMPTS\tTIME\tERROR")
		for _, l := range letters {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Seq, l.Target, orDash(l.Key), origText(cfg.Pipeline, l), orDash(l.Attempts),
				l.Time.UTC().Format(time.RFC3339), truncate(l.Error, errorWidth))
		}
		tw.Flush()
	}
	counts := map[string]int{}
	for _, l := range letters {
		counts[l.Target]++
	}
	// Every configured target, then any other that has dead letters.
	var names []string
	for _, t := range cfg.Targets {
		if only == "" || t.Name == only {
			names = append(names, t.Name)
		}
	}
	var extra []string
	for n := range counts {
		if _, ok := cfg.Target(n); !ok {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range append(names, extra...) {
		fmt.Fprintf(out, "target %s: %d dead letter(s)\n", n, counts[n])
	}
}

func printLetter(out io.Writer, l dlq.Letter) {
	fmt.Fprintf(out, "dead letter %d (target %s), subject %s, stored %s\n", l.Seq, l.Target, l.Subject, l.Time.UTC().Format(time.RFC3339Nano))
	fmt.Fprintln(out, "headers:")
	keys := make([]string, 0, len(l.Header))
	for k := range l.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range l.Header[k] {
			fmt.Fprintf(out, "  %s: %s\n", k, v)
		}
	}
	b, err := event.Decode(l.Data)
	if err != nil {
		fmt.Fprintf(out, "batch: %d bytes that do not decode: %v\n", len(l.Data), err)
		return
	}
	fmt.Fprintf(out, "batch: pipeline %s, table %s, pattern %s, origin %s, schema version %d, %d change(s)\n",
		b.GetPipeline(), b.GetTable(), strings.TrimPrefix(b.GetPattern().String(), "CAPTURE_PATTERN_"), orDash(b.GetOrigin()),
		b.GetSchemaVersion(), len(b.GetChanges()))
	cols := b.GetColumns()
	width := 0
	for _, c := range cols {
		width = max(width, utf8.RuneCountInString(c.GetName()))
	}
	keyIdx := event.KeyIndexes(b)
	var vals [][]byte
	for i, c := range b.GetChanges() {
		vals, err = event.Row(c.GetRow(), vals)
		if err != nil {
			fmt.Fprintf(out, "change %d: %s, row does not unpack: %v\n", i, opName(c.GetOp()), err)
			continue
		}
		captured := "-"
		if ns := c.GetCapturedAtUnixNano(); ns != 0 {
			captured = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
		}
		fmt.Fprintf(out, "change %d: %s, key %s, captured %s\n", i, opName(c.GetOp()), event.KeyOf(vals, keyIdx), captured)
		for j, col := range cols {
			v := "NULL"
			if j < len(vals) && vals[j] != nil {
				v = fmt.Sprintf("%q", vals[j])
			}
			mark := ""
			if col.GetKey() {
				mark = ", key"
			}
			fmt.Fprintf(out, "  %-*s = %s  (%s%s)\n", width, col.GetName(), v, col.GetType(), mark)
		}
	}
}

func opName(op onewayv1.Op) string {
	return strings.ToLower(strings.TrimPrefix(op.String(), "OP_"))
}

// origText is a dead letter's original sequence, naming the subject when
// it is not the source (a retry message the consume loop dead-lettered).
func origText(pipeline string, l dlq.Letter) string {
	if l.OriginalSeq == 0 {
		return "-"
	}
	if l.OriginalSubject != "" && l.OriginalSubject != bus.SourceSubject(pipeline) {
		return fmt.Sprintf("%d (%s)", l.OriginalSeq, l.OriginalSubject)
	}
	return fmt.Sprintf("%d", l.OriginalSeq)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
