// Package natsembed runs a NATS JetStream server inside the process, for
// `oneway up` and tests. Only binaries that embed a server import it.
package natsembed

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options of an embedded server.
type Options struct {
	// StoreDir holds JetStream's files; a restart with the same dir resumes.
	StoreDir string
	// Host and Port to listen on; Port -1 picks a free port. Default 127.0.0.1:-1.
	Host string
	Port int
	// SyncInterval is how often the store is fsynced; 0 keeps the server
	// default (2 minutes). "always" semantics are not exposed: see README.
	SyncInterval time.Duration
	// MaxPayload is the largest message the server accepts; default 8 MiB.
	MaxPayload int32
	// User and Password, when set, are required of every client.
	User, Password string
}

// Start runs a JetStream server and waits until it accepts connections.
// Call Shutdown (then WaitForShutdown) on the returned server.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.MaxPayload == 0 {
		// 8 MiB lets a batch of large rows through in one message.
		o.MaxPayload = 8 << 20
	}
	opts := &server.Options{
		ServerName: "oneway-embedded",
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		// 8 MiB lets a batch of large rows through in one message.
		MaxPayload:   o.MaxPayload,
		SyncInterval: o.SyncInterval,
		Username:     o.User,
		Password:     o.Password,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("start embedded NATS: not ready within 30s (store %s)", o.StoreDir)
	}
	return s, nil
}
