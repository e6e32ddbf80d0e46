package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/runner"
)

// Command is the reader binary's command tree. `reader run` reads the
// source; `reader run --readback T` reads target T back instead (staged
// mode), as a process of its own.
func Command() *cobra.Command {
	var readback string
	root := cli.ServiceCommand("reader", "Read a System of Record (or a target, --readback) and publish its changes", func(d cli.Deps) ([]runner.Component, error) {
		if readback != "" {
			r, err := NewReadback(d.Config, readback, d.Bus, d.Log, d.Metrics)
			if err != nil {
				return nil, cli.Exit(cli.ExitUsage, err)
			}
			ready, _ := d.Health.Register(r.Name())
			r.OnCaughtUp = func(uint64) { ready() }
			return []runner.Component{r}, nil
		}
		r := New(d.Config, d.Bus, d.Log, d.Metrics)
		ready, _ := d.Health.Register("reader")
		r.OnCaughtUp = func(uint64) { ready() }
		return []runner.Component{r}, nil
	})
	if run, _, err := root.Find([]string{"run"}); err == nil && run != root {
		run.Flags().StringVar(&readback, "readback", "", "read target `T` back (staged mode; targets[].readback configures it) instead of the source")
	}
	return root
}
