package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage"
)

// Command is the stager binary's command tree. `stager run` needs a
// PostgreSQL stage (stage.url); start more processes to scale out: they
// share the durable consumer, and the store's version guard orders them.
func Command() *cobra.Command {
	return cli.StagedServiceCommand("stager", "Stage a pipeline's changes for the differ (staged push)", 8,
		func(d cli.Deps, store stage.Store, ready func()) (runner.Component, error) {
			s, err := New(d.Config, d.Bus, store, d.Log, d.Metrics)
			if err != nil {
				return nil, err
			}
			s.OnReady = ready
			return s, nil
		})
}
