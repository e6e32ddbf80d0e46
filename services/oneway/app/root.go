// Package app is the oneway operator CLI.
package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/cli"
)

// Root returns the oneway command tree.
func Root() *cobra.Command {
	root := &cobra.Command{
		Use:   "oneway",
		Short: "oneway keeps targets in step with a System of Record",
		Long: `oneway keeps one or more targets in step with a System of Record (SoR):
inserts, updates and, by policy, deletes flow from the SoR to every target
over NATS JetStream, and arrive eventually, even across crashes and outages.`,
	}
	root.AddCommand(upCommand(), demoCommand(), statusCommand(), verifyCommand(), diffCommand(), approveCommand(), dlqCommand(), resyncCommand(), replayCommand(), permissionsCommand(), cli.ConfigCommand(), cli.VersionCommand(), cli.HealthcheckCommand())
	return root
}
