package natsbus_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

// startServer runs a NATS server with o until the test ends.
func startServer(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return s
}

// TestAuthOptions connects to a real server that requires TLS and a user
// and password: the right settings connect; a wrong password, or a CA that
// did not sign the server's certificate, fail at once with a clear error
// (the 20 s context is shorter than the 30 s wait for a server, so waiting
// would end in a context error instead).
func TestAuthOptions(t *testing.T) {
	dir := t.TempDir()
	caFile, srvTLS := testca.New(t, dir)
	otherCA, _ := testca.New(t, t.TempDir())
	s := startServer(t, &server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		Username: "svc", Password: "s3cret-pw",
		TLS: true, TLSConfig: srvTLS, TLSTimeout: 2,
	})
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

// A setup request the server's permissions refuse fails with the
// violation and what to do about it, instead of being retried for minutes
// as if JetStream were not ready (a refused request gets no reply, so it
// times out like one to a server that is still electing its leader); the
// refusal is logged as an error naming the user. A user granted the
// request is unaffected.
func TestSetupRefusedByPermissions(t *testing.T) {
	t.Parallel()
	perms := func(publish ...string) *server.Permissions {
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: publish},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}
	}
	s := startServer(t, &server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{
			{Username: "full", Password: "pw-full", Permissions: perms("$JS.API.>")},
			// May read stream info, not create a stream.
			{Username: "limited", Password: "pw-limited", Permissions: perms("$JS.API.INFO", "$JS.API.STREAM.INFO.>")},
		},
	})
	tests := []struct {
		user    string
		wantErr []string // nil: EnsureStream succeeds
		wantLog []string
	}{
		{user: "full"},
		{user: "limited",
			wantErr: []string{"stream ONEWAY_REFUSED_LIMITED", "Permissions Violation for Publish to \"$JS.API.STREAM.CREATE.ONEWAY_REFUSED_LIMITED\"", "oneway permissions"},
			wantLog: []string{"NATS refused this user an operation", "user=limited", "STREAM.CREATE.ONEWAY_REFUSED_LIMITED"}},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			// Shorter than the setup's retries (about two minutes): without
			// the refusal recognised, EnsureStream ends in this context's
			// deadline.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			b, err := natsbus.Connect(ctx, s.ClientURL(), "refused-test", log,
				natsbus.AuthOptions(config.NATSAuth{User: tt.user, Password: config.Opaque("pw-" + tt.user)})...)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			_, err = b.EnsureStream(ctx, natsbus.StreamSpec{Pipeline: "refused_" + tt.user, MaxBytes: 1 << 20, Replicas: 1, DuplicateWindow: time.Minute})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("EnsureStream as %s: %v", tt.user, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("EnsureStream as %s succeeded", tt.user)
			}
			if ctx.Err() != nil {
				t.Fatalf("EnsureStream as %s retried until the context ended: %v", tt.user, err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			for _, want := range tt.wantLog {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the log does not say %q:\n%s", want, logs.String())
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the connection's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WatchRefusals reports not ready while the server refuses the user
// something, and ready again once a window passed without a refusal.
func TestWatchRefusals(t *testing.T) {
	t.Parallel()
	s := startServer(t, &server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "svc", Password: "pw-svc", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"allowed"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := natsbus.Connect(ctx, s.ClientURL(), "watch-test", newLogger(t),
		natsbus.AuthOptions(config.NATSAuth{User: "svc", Password: config.Opaque("pw-svc")})...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var mu sync.Mutex
	state := "unknown"
	set := func(v string) func() {
		return func() {
			mu.Lock()
			state = v
			mu.Unlock()
		}
	}
	is := func(want string) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if state != want {
				return fmt.Errorf("state %s, want %s", state, want)
			}
			return nil
		}
	}
	done := make(chan error, 1)
	go func() {
		done <- b.WatchRefusals(ctx, 10*time.Millisecond, 2*time.Second, set("ready"), set("refused"))
	}()
	waitFor(t, 10*time.Second, is("ready"))
	if err := b.NC.Publish("allowed", nil); err != nil {
		t.Fatal(err)
	}
	if err := b.NC.Publish("forbidden", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, is("refused"))
	waitFor(t, 10*time.Second, is("ready")) // the window passed
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("WatchRefusals returned %v when its context ended", err)
	}
}
