package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
)

// Command is the reader binary's command tree.
func Command() *cobra.Command {
	return cli.ServiceCommand("reader", "Read a System of Record and publish its changes", func(d cli.Deps) ([]runner.Component, error) {
		r := New(d.Config, d.Bus, d.Log, d.Metrics)
		ready, _ := d.Health.Register("reader")
		r.OnCaughtUp = func(uint64) { ready() }
		return []runner.Component{r}, nil
	})
}
