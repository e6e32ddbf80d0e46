package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
)

// Command is the writer binary's command tree. `writer run` runs one writer
// per target of the pipeline; start more processes to scale out.
func Command() *cobra.Command {
	return cli.ServiceCommand("writer", "Apply a pipeline's changes to its targets", func(d cli.Deps) ([]runner.Component, error) {
		var comps []runner.Component
		for _, t := range d.Config.Targets {
			w, err := New(d.Config, t.Name, d.Bus, d.Log, d.Metrics)
			if err != nil {
				return nil, err
			}
			ready, _ := d.Health.Register("writer-" + t.Name)
			w.OnReady = ready
			comps = append(comps, w)
		}
		return comps, nil
	})
}
