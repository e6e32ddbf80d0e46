package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage"
)

// Command is the differ binary's command tree. `differ run` needs a
// PostgreSQL stage (stage.url). Run one differ per pipeline.
func Command() *cobra.Command {
	return cli.StagedServiceCommand("differ", "Decide what each target needs and push it (staged push)", 4,
		func(d cli.Deps, store stage.Store, ready func()) (runner.Component, error) {
			df, err := New(d.Config, d.Bus, store, d.Log, d.Metrics)
			if err != nil {
				return nil, err
			}
			df.OnReady = ready
			return df, nil
		})
}
