// Package bustest starts real NATS JetStream servers for tests.
package bustest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
)

// StartJetStream runs an embedded JetStream server on a free port with its
// store in a temp dir, stopped when the test ends. It returns the server
// (to restart or inspect) and its client URL.
func StartJetStream(t testing.TB) (*server.Server, string) {
	t.Helper()
	return StartJetStreamAt(t, t.TempDir())
}

// StartJetStreamAt is StartJetStream with a given store dir, so a test can
// stop a server and start another on the same files.
func StartJetStreamAt(t testing.TB, dir string) (*server.Server, string) {
	t.Helper()
	return StartJetStreamWith(t, natsembed.Options{StoreDir: dir})
}

// StartJetStreamWith is StartJetStream with server options (the store dir
// defaults to a temp dir).
func StartJetStreamWith(t testing.TB, o natsembed.Options) (*server.Server, string) {
	t.Helper()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	s, err := natsembed.Start(o)
	if err != nil {
		t.Fatalf("start JetStream: %v", err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s, s.ClientURL()
}
