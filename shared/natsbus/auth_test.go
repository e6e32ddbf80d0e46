package natsbus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

// TestAuthOptions connects to a real server that requires TLS and a user
// and password: the right settings connect; a wrong password, or a CA that
// did not sign the server's certificate, fail at once with a clear error
// (the 20 s context is shorter than the 30 s wait for a server, so waiting
// would end in a context error instead).
func TestAuthOptions(t *testing.T) {
	dir := t.TempDir()
	caFile, srvTLS := testca.New(t, dir)
	otherCA, _ := testca.New(t, t.TempDir())
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		Username: "svc", Password: "s3cret-pw",
		TLS: true, TLSConfig: srvTLS, TLSTimeout: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer s.Shutdown()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	url := s.ClientURL()
	for _, tc := range []struct {
		name string
		nats config.NATSAuth
		want string // "" = connects; else a substring of the error
	}{
		{"user, password and CA", config.NATSAuth{User: "svc", Password: "s3cret-pw", TLS: config.TLS{CAFile: caFile}}, ""},
		{"wrong password", config.NATSAuth{User: "svc", Password: "nope", TLS: config.TLS{CAFile: caFile}}, "authorization"},
		{"untrusted server certificate", config.NATSAuth{User: "svc", Password: "s3cret-pw", TLS: config.TLS{CAFile: otherCA}}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			b, err := natsbus.Connect(ctx, url, "auth-test", newLogger(t), natsbus.AuthOptions(tc.nats)...)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				b.Close()
				return
			}
			if err == nil {
				b.Close()
				t.Fatal("connected; want an error")
			}
			if !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}
