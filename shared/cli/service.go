package cli

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/procs"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Deps are what a service's components are built from.
type Deps struct {
	Config  *config.Pipeline
	Bus     *natsbus.Bus
	Log     *slog.Logger
	Metrics *telemetry.Metrics
	Health  *telemetry.Health
}

// ServiceCommand builds the command tree of a standalone service binary:
// `run` (connects to the config's NATS URL, serves admin endpoints, runs
// the components build returns until SIGINT/SIGTERM), `config` and `version`.
// A config of several tables (source.tables) calls build once per table's
// pipeline, with one bus, metrics and health shared by all.
func ServiceCommand(name, short string, build func(d Deps) ([]runner.Component, error)) *cobra.Command {
	root := &cobra.Command{Use: name, Short: short}
	var f Flags
	var adminAddr string
	var stopTimeout time.Duration
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the " + name + " against the NATS server in the config",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := f.LoadAll()
			if err != nil {
				return err
			}
			// The pipelines of one file share its NATS settings.
			first := ps[0]
			if first.NATS.URL.Value() == "" {
				return Exit(ExitUsage, errors.New(first.File+": nats.url: "+name+" run needs a NATS server (only `oneway up` embeds one)"))
			}
			base, err := f.Logger(name)
			if err != nil {
				return err
			}
			log := base.With("pipeline", first.Pipeline)
			if first.Group != "" {
				log = base.With("pipeline", first.Group)
			}
			ctx, stop := runner.SignalContext(cmd.Context())
			defer stop()
			b, err := natsbus.Connect(ctx, first.NATS.URL.Value(), "oneway-"+name, log, natsbus.AuthOptions(first.NATS.NATSAuth)...)
			if err != nil {
				return err
			}
			defer b.Close()
			metrics, health := telemetry.NewMetrics(Version, Commit()), telemetry.NewHealth()
			// Not ready while NATS refuses this user something: a grant is
			// missing (logged with the fix).
			permsReady, permsRefused := health.Register("nats-permissions")
			comps := []runner.Component{runner.Func("nats-permissions", func(ctx context.Context) error {
				return b.WatchRefusals(ctx, time.Second, time.Minute, permsReady, permsRefused)
			})}
			for _, cfg := range ps {
				d := Deps{Config: cfg, Bus: b, Log: base.With("pipeline", cfg.Pipeline), Metrics: metrics, Health: health}
				c, err := build(d)
				if err != nil {
					return err
				}
				comps = append(comps, c...)
			}
			if adminAddr == "" {
				adminAddr = first.Admin.Addr
			}
			if adminAddr != "" {
				srv := telemetry.NewServer(adminAddr, metrics, health, log)
				if err := srv.Start(); err != nil {
					return Exit(ExitUsage, err)
				}
				comps = append([]runner.Component{srv}, comps...)
			}
			// One P while one core is enough: see package procs.
			return runner.Run(ctx, log, stopTimeout, append([]runner.Component{procs.New(log)}, comps...)...)
		},
	}
	f.Bind(run)
	run.Flags().StringVar(&adminAddr, "admin-addr", "", "serve /healthz, /readyz and /metrics here (default: the config's admin.addr)")
	run.Flags().DurationVar(&stopTimeout, "stop-timeout", 30*time.Second, "how long shutdown may take")
	root.AddCommand(run, ConfigCommand(), VersionCommand(), HealthcheckCommand())
	return root
}
