package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/stagedb"
)

// StagedServiceCommand is ServiceCommand for a staged-push service (stager,
// differ): `run` refuses a config that is not in staged mode or has no
// PostgreSQL stage (only `oneway up` embeds one), opens the stage with at
// most maxConns connections and hands it to build, with the function that
// marks the service ready. The stage is closed once the component returns,
// or at once when build fails.
func StagedServiceCommand(name, short string, maxConns int32,
	build func(d Deps, store stage.Store, ready func()) (runner.Component, error)) *cobra.Command {
	return ServiceCommand(name, short, func(d Deps) ([]runner.Component, error) {
		cfg := d.Config
		if !cfg.Staged() {
			return nil, Exit(ExitUsage, fmt.Errorf("%s: mode: the %s runs in staged mode only (mode: staged)", cfg.File, name))
		}
		if cfg.Stage.URL.Value() == "" {
			return nil, Exit(ExitUsage, fmt.Errorf("%s: stage.url: %s run needs a PostgreSQL stage (only `oneway up` embeds one)", cfg.File, name))
		}
		store, err := stagedb.Open(context.Background(), cfg, "", maxConns)
		if err != nil {
			return nil, err
		}
		ready, _ := d.Health.Register(name)
		c, err := build(d, store, ready)
		if err != nil {
			return nil, errors.Join(err, store.Close())
		}
		return []runner.Component{closing{c, store}}, nil
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
