package app

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage/stagedb"
)

// Command is the differ binary's command tree. `differ run` needs a
// PostgreSQL stage (stage.url). Run one differ per pipeline.
func Command() *cobra.Command {
	return cli.ServiceCommand("differ", "Decide what each target needs and push it (staged push)", func(d cli.Deps) ([]runner.Component, error) {
		cfg := d.Config
		if !cfg.Staged() {
			return nil, cli.Exit(cli.ExitUsage, errors.New(cfg.File+": mode: the differ runs in staged mode only (mode: staged)"))
		}
		if cfg.Stage.URL.Value() == "" {
			return nil, cli.Exit(cli.ExitUsage, errors.New(cfg.File+": stage.url: differ run needs a PostgreSQL stage (only `oneway up` embeds one)"))
		}
		store, err := stagedb.Open(context.Background(), cfg, "", 4)
		if err != nil {
			return nil, err
		}
		df, err := New(cfg, d.Bus, store, d.Log, d.Metrics)
		if err != nil {
			store.Close()
			return nil, err
		}
		ready, _ := d.Health.Register("differ")
		df.OnReady = ready
		return []runner.Component{closing{df, store}}, nil
	})
}

// closing closes the store once the component returns.
type closing struct {
	runner.Component
	store interface{ Close() error }
}

func (c closing) Run(ctx context.Context) error {
	defer c.store.Close()
	return c.Component.Run(ctx)
}
