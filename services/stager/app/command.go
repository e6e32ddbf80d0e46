package app

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage/stagedb"
)

// Command is the stager binary's command tree. `stager run` needs a
// PostgreSQL stage (stage.url); start more processes to scale out: they
// share the durable consumer, and the store's version guard orders them.
func Command() *cobra.Command {
	return cli.ServiceCommand("stager", "Stage a pipeline's changes for the differ (staged push)", func(d cli.Deps) ([]runner.Component, error) {
		cfg := d.Config
		if !cfg.Staged() {
			return nil, cli.Exit(cli.ExitUsage, errors.New(cfg.File+": mode: the stager runs in staged mode only (mode: staged)"))
		}
		if cfg.Stage.URL.Value() == "" {
			return nil, cli.Exit(cli.ExitUsage, errors.New(cfg.File+": stage.url: stager run needs a PostgreSQL stage (only `oneway up` embeds one)"))
		}
		store, err := stagedb.Open(context.Background(), cfg, "", 8)
		if err != nil {
			return nil, err
		}
		s, err := New(cfg, d.Bus, store, d.Log, d.Metrics)
		if err != nil {
			store.Close()
			return nil, err
		}
		ready, _ := d.Health.Register("stager")
		s.OnReady = ready
		return []runner.Component{closing{s, store}}, nil
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
