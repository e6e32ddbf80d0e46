package app

import (
	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/services/oneway/internal/natsperm"
	"github.com/oneway-sync/oneway/shared/cli"
)

func permissionsCommand() *cobra.Command {
	var f cli.Flags
	var prefix string
	cmd := &cobra.Command{
		Use:   "permissions",
		Short: "Print least-privilege NATS users for the config's pipelines",
		Long: `permissions prints a NATS server config authorization block with one user
per oneway service (reader, writer, stager, differ, status, operator), each
allowed only the subjects and JetStream API calls that service makes for the
config's pipelines and targets. Include it from the server's config; the
passwords come from the server's environment (ONEWAY_NATS_<USER>_PASSWORD).
deploy/nats/permissions.conf is its output for
deploy/examples/invoices-staged.yaml.`,
		Example: `  oneway permissions --config pipeline.yaml > permissions.conf`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfgs, err := f.LoadAll()
			if err != nil {
				return err
			}
			return natsperm.Write(cmd.OutOrStdout(), natsperm.FromConfigs(cfgs), natsperm.Options{File: f.ConfigPath, UserPrefix: prefix})
		},
	}
	f.Bind(cmd)
	cmd.Flags().StringVar(&prefix, "user-prefix", "", "put this before every user's name (for a server whose users serve several pipeline files)")
	return cmd
}
