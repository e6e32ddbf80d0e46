package cli

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// HealthcheckCommand is `healthcheck`: it GETs an admin endpoint of a running
// service and exits 0 on HTTP 200, 1 otherwise. Container images have no
// shell or curl, so compose and Kubernetes exec probes call the binary itself.
func HealthcheckCommand() *cobra.Command {
	var url string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 when a running service's admin endpoint answers 200 (for container probes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return probe(cmd.Context(), url, timeout)
		},
	}
	cmd.Flags().StringVar(&url, "url", envOr("ONEWAY_HEALTHCHECK_URL", "http://127.0.0.1:9090/readyz"),
		"endpoint to probe (env ONEWAY_HEALTHCHECK_URL)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	return cmd
}

func probe(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Exit(ExitUsage, fmt.Errorf("healthcheck: bad --url %q: %w", url, err))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}
