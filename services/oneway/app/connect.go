package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/services/oneway/internal/dlq"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// storeFlags are the flags of the commands that work on a pipeline's
// JetStream state (dlq, resync): a NATS URL, or the data directory of
// `oneway up`'s embedded server.
type storeFlags struct {
	natsURL string
	dataDir string
}

func (f *storeFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.natsURL, "nats-url", "", "NATS server to use (default: the config's nats.url; when that is empty, the embedded store under --data-dir)")
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "./data", "data directory of `oneway up`, for a pipeline with an embedded NATS server (stop `oneway up` first)")
}

// connect connects to the pipeline's NATS server: --nats-url, else the
// config's nats.url, else an embedded server on the store under
// --data-dir, which it locks (a running `oneway up` owns that store, so it
// must be stopped). closeBus releases everything.
func (f *storeFlags) connect(ctx context.Context, cfg *config.Pipeline, name string, log *slog.Logger) (b *natsbus.Bus, closeBus func(), err error) {
	var cleanup []func()
	release := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	url := f.natsURL
	if url == "" {
		url = cfg.NATS.URL.Value()
	}
	auth := natsbus.AuthOptions(cfg.NATS.NATSAuth)
	if url == "" {
		auth = nil // the embedded server has no credentials
		dir := filepath.Join(f.dataDir, "nats")
		if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
			return nil, nil, cli.Exit(cli.ExitUsage, fmt.Errorf("no embedded NATS store at %s (%v): pass the --data-dir that `oneway up` used, or --nats-url", dir, err))
		}
		release, err := dlq.LockStore(dir)
		if err != nil {
			if errors.Is(err, dlq.ErrStoreInUse) {
				return nil, nil, cli.Exit(cli.ExitFailure, fmt.Errorf("%v: stop `oneway up` first, or start it with --nats-port P and pass --nats-url nats://127.0.0.1:P", err))
			}
			return nil, nil, err
		}
		cleanup = append(cleanup, release)
		var stop func()
		url, stop, err = startEmbedded(dir, 0)
		if err != nil {
			return nil, nil, err
		}
		cleanup = append(cleanup, stop)
		log.Debug("embedded NATS JetStream started", "url", url, "store_dir", dir)
	}
	b, err = natsbus.Connect(ctx, url, name, log, auth...)
	if err != nil {
		return nil, nil, err
	}
	cleanup = append(cleanup, b.Close)
	return b, release, nil
}
