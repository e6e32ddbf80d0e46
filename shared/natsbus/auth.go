package natsbus

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/oneway-sync/oneway/shared/config"
)

// AuthOptions turns NATS credentials, TLS settings and the inbox prefix
// (the pipeline's nats: section, or a NATS target's) into connect options.
// The files were checked when the config was loaded; a file that became
// unreadable since fails the connect, naming it.
func AuthOptions(n config.NATSAuth) []nats.Option {
	var opts []nats.Option
	switch {
	case n.User != "":
		opts = append(opts, nats.UserInfo(n.User, n.Password.Value()))
	case n.Token != "":
		opts = append(opts, nats.Token(n.Token.Value()))
	case n.NKeyFile != "":
		if o, err := nats.NkeyOptionFromSeed(n.NKeyFile); err == nil {
			opts = append(opts, o)
		} else {
			opts = append(opts, func(*nats.Options) error { return err })
		}
	case n.CredsFile != "":
		opts = append(opts, nats.UserCredentials(n.CredsFile))
	}
	if n.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(n.InboxPrefix))
	}
	if tlsCfg, err := n.TLS.ClientConfig(); err != nil {
		opts = append(opts, func(*nats.Options) error { return fmt.Errorf("nats TLS: %w", err) })
	} else if tlsCfg != nil {
		opts = append(opts, nats.Secure(tlsCfg))
	}
	return opts
}
