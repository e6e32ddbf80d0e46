package cli

import (
	"errors"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
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
			cfg, err := f.Load()
			if err != nil {
				return err
			}
			if cfg.NATS.URL.Value() == "" {
				return Exit(ExitUsage, errors.New(cfg.File+": nats.url: "+name+" run needs a NATS server (only `oneway up` embeds one)"))
			}
			log, err := f.Logger(name)
			if err != nil {
				return err
			}
			log = log.With("pipeline", cfg.Pipeline)
			ctx, stop := runner.SignalContext(cmd.Context())
			defer stop()
			b, err := natsbus.Connect(ctx, cfg.NATS.URL.Value(), "oneway-"+name, log, natsbus.AuthOptions(cfg.NATS)...)
			if err != nil {
				return err
			}
			defer b.Close()
			d := Deps{Config: cfg, Bus: b, Log: log, Metrics: telemetry.NewMetrics(Version, Commit()), Health: telemetry.NewHealth()}
			comps, err := build(d)
			if err != nil {
				return err
			}
			if adminAddr == "" {
				adminAddr = cfg.Admin.Addr
			}
			if adminAddr != "" {
				srv := telemetry.NewServer(adminAddr, d.Metrics, d.Health, log)
				if err := srv.Start(); err != nil {
					return Exit(ExitUsage, err)
				}
				comps = append([]runner.Component{srv}, comps...)
			}
			return runner.Run(ctx, log, stopTimeout, comps...)
		},
	}
	f.Bind(run)
	run.Flags().StringVar(&adminAddr, "admin-addr", "", "serve /healthz, /readyz and /metrics here (default: the config's admin.addr)")
	run.Flags().DurationVar(&stopTimeout, "stop-timeout", 30*time.Second, "how long shutdown may take")
	root.AddCommand(run, ConfigCommand(), VersionCommand(), HealthcheckCommand())
	return root
}
