package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/services/oneway/internal/status"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

func statusCommand() *cobra.Command {
	var url, configPath, serve string
	var asJSON bool
	var store storeFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running pipeline's status: reader, lag, throughput, dead letters, last errors",
		Long: `status asks a running "oneway up" for its status (/status.json on its admin
address) and prints it as a table, or as JSON with --json. The address is
--url, else the config's admin.addr, else ` + defaultAdminAddr + `.

With --serve ADDR it serves the status page and /status.json itself, read
from the pipeline's NATS server (--config, and --nats-url or the config's
nats.url): for services run as separate processes or containers, where no
"oneway up" serves it. Throughput there counts messages, not rows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serve != "" {
				return serveStatus(cmd, configPath, serve, store)
			}
			var paths []string // one pipeline per path under url
			if configPath != "" {
				cfgs, err := config.LoadAll(configPath)
				if err != nil {
					return cli.Exit(cli.ExitUsage, fmt.Errorf("invalid config:\n%w", err))
				}
				if url == "" {
					url = "http://" + defaultAdminAddr
					if a := cfgs[0].Admin.Addr; a != "" {
						url = "http://" + a
					}
				}
				if len(cfgs) > 1 {
					for _, cfg := range cfgs {
						paths = append(paths, status.PipelinePath(cfg.Pipeline))
					}
				}
			}
			if url == "" {
				url = "http://" + defaultAdminAddr
			}
			if paths == nil {
				paths = []string{"/"}
			}
			for i, path := range paths {
				s, raw, err := fetchStatus(cmd.Context(), strings.TrimSuffix(url, "/")+path)
				if err != nil {
					return err
				}
				if asJSON {
					if _, err := cmd.OutOrStdout().Write(raw); err != nil {
						return err
					}
					continue
				}
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				printStatus(cmd.OutOrStdout(), s)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "base URL of the running oneway's admin server")
	cmd.Flags().StringVarP(&configPath, "config", "c", os.Getenv("ONEWAY_CONFIG"), "pipeline config: its admin.addr, or what --serve reads (env ONEWAY_CONFIG)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.Flags().StringVar(&serve, "serve", "", "serve the status page here (HOST:PORT) from the pipeline's NATS server, until stopped")
	store.bind(cmd)
	return cmd
}

// serveStatus serves the status page of the pipeline in configPath, read
// from its NATS server, until SIGINT/SIGTERM.
func serveStatus(cmd *cobra.Command, configPath, addr string, store storeFlags) error {
	if configPath == "" {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("--serve needs --config"))
	}
	cfgs, err := config.LoadAll(configPath)
	if err != nil {
		return cli.Exit(cli.ExitUsage, fmt.Errorf("invalid config:\n%w", err))
	}
	cfg := cfgs[0]
	f := cli.Flags{LogFormat: "auto", LogLevel: "info"}
	log, err := f.Logger("oneway")
	if err != nil {
		return err
	}
	log = log.With("pipeline", cfg.Pipeline)
	ctx, stop := runner.SignalContext(cmd.Context())
	defer stop()
	b, closeBus, err := store.connect(ctx, cfg, "oneway-status", log)
	if err != nil {
		return err
	}
	defer closeBus()
	srv := telemetry.NewServer(addr, nil, nil, log)
	comps := []runner.Component{srv}
	for i, cfg := range cfgs {
		collector := status.NewCollector(b, cfg, nil, nil)
		if i == 0 {
			status.Mount(srv, collector, log)
		}
		if len(cfgs) > 1 {
			status.MountPipeline(srv, cfg.Pipeline, collector, log)
		}
		comps = append(comps, collector)
	}
	if err := srv.Start(); err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	log.Info("status page serving", "url", "http://"+srv.Addr()+"/")
	return runner.Run(ctx, log, 10*time.Second, comps...)
}

func fetchStatus(ctx context.Context, base string) (status.Snapshot, []byte, error) {
	var s status.Snapshot
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/status.json", nil)
	if err != nil {
		return s, nil, cli.Exit(cli.ExitUsage, fmt.Errorf("bad --url %q: %w", base, err))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, nil, fmt.Errorf("no oneway answering at %s (is `oneway up` running, with that admin address?): %w", base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, nil, fmt.Errorf("read status from %s: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return s, nil, fmt.Errorf("status from %s: HTTP %d: %s", base, resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, nil, fmt.Errorf("status from %s is not oneway's: %w", base, err)
	}
	return s, raw, nil
}

func printStatus(out io.Writer, s status.Snapshot) {
	reader := "standing by"
	if s.Reader.Active {
		reader = "active"
	}
	if s.Reader.Phase != "" {
		reader += ", " + s.Reader.Phase
	}
	fmt.Fprintf(out, "pipeline %s at %s\n", s.Pipeline, s.Time.Local().Format(time.TimeOnly))
	fmt.Fprintf(out, "reader: %s; stream %s: %d messages, %d bytes; %.0f rows/s applied\n\n",
		reader, s.Stream.Name, s.Stream.Messages, s.Stream.Bytes, s.RowsPerSecond)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TARGET\tKIND\tLAG MSGS\tLAG S\tMSGS/S\tDEAD LETTERS\t")
	for _, t := range s.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.1f\t%d\t\n", t.Name, t.Kind, t.LagMessages, t.LagSeconds, t.MessagesPerSecond, t.DeadLetters)
	}
	tw.Flush()
	if c := s.Comparison; c != nil {
		if c.Error != "" {
			fmt.Fprintf(out, "\ncomparison failed: %s\n", c.Error)
		} else {
			fmt.Fprintf(out, "\ncompared directly: SoR %d rows; target %s %d rows, %d out of step\n", c.SourceRows, c.Target, c.TargetRows, c.OutOfStep)
		}
	}
	for _, t := range s.Targets {
		if t.LastError != "" {
			fmt.Fprintf(out, "\nlast error of %s (%s): %s", t.Name, t.LastErrorAt.Local().Format(time.TimeOnly), t.LastError)
		}
	}
	fmt.Fprintln(out)
}
