package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// secure is base made acceptable to production mode.
const secure = `pipeline: inv
production: true
nats:
  url: tls://nats-1:4222,tls://nats-2:4222
  user: oneway
  password: hunter2
source:
  kind: postgres
  url: postgres://u:srcpass@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem
  table: invoices
  key: [id]
  capture:
    column: updated_at
targets:
  - name: pg
    kind: postgres
    url: host=h2 user=u password=tgtpass sslmode=verify-ca dbname=x
  - name: api
    kind: http
    url: https://api.example.com/invoices/{{.Key}}
    ledger_url: postgres://u:l@h3/ledger?sslmode=verify-full
`

func TestProductionMode(t *testing.T) {
	_, err := Parse("p.yaml", []byte(secure), noEnv)
	require.NoError(t, err)

	tests := []struct {
		name, from, to string
		field, msg     string
	}{
		{"source sslmode disable", "sslmode=verify-full&sslrootcert=/etc/ca.pem", "sslmode=disable", "source.url", "sslmode=disable is not verified TLS"},
		{"source sslmode default", "?sslmode=verify-full&sslrootcert=/etc/ca.pem", "", "source.url", "sslmode=prefer is not verified TLS"},
		{"target sslmode require", "sslmode=verify-ca", "sslmode=require", "targets[0].url", "sslmode=require is not verified TLS"},
		{"ledger sslmode allow", "ledger?sslmode=verify-full", "ledger?sslmode=allow", "targets[1].ledger_url", "sslmode=allow"},
		{"plaintext nats", "tls://nats-1:4222,tls://nats-2", "tls://nats-1:4222,nats://nats-2", "nats.url", "nats://nats-2:4222 is plaintext"},
		{"no nats credentials", "  user: oneway\n  password: hunter2\n", "", "nats", "needs NATS credentials"},
		{"embedded nats", "  url: tls://nats-1:4222,tls://nats-2:4222\n", "", "nats.url", "external NATS cluster"},
		{"http target", "https://api.example.com", "http://api.example.com", "targets[1].url", "production mode needs https://"},
		{"http source", "  kind: postgres\n  url: postgres://u:srcpass@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem\n  table: invoices\n  key: [id]\n  capture:\n    column: updated_at\n",
			"  kind: http\n  url: http://api.example.com/invoices\n  table: invoices\n  key: [id]\n  columns: [id]\n", "source.url", "production mode needs https://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(secure, tc.from, tc.to, 1)
			require.NotEqual(t, secure, src, "the replacement must change the file")
			_, err := Parse("p.yaml", []byte(src), noEnv)
			require.Error(t, err)
			var found bool
			for _, fe := range fieldErrors(t, err) {
				if fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					found = true
				}
				require.NotContains(t, fe.Error(), "hunter2")
				require.NotContains(t, fe.Error(), "srcpass")
			}
			require.True(t, found, "want %s: …%s…, got %v", tc.field, tc.msg, err)
		})
	}
	t.Run("off by default", func(t *testing.T) {
		_, err := Parse("p.yaml", []byte(base), noEnv)
		require.NoError(t, err)
	})
	t.Run("nats target", func(t *testing.T) {
		dir := t.TempDir()
		ca := filepath.Join(dir, "ca.pem")
		require.NoError(t, os.WriteFile(ca, []byte("x"), 0o600))
		target := "  - name: bus\n    kind: nats\n    url: nats://sink:4222\n    ledger_url: postgres://u:l@h3/ledger?sslmode=verify-full\n"
		_, err := Parse("p.yaml", []byte(secure+target), noEnv)
		var found bool
		for _, fe := range fieldErrors(t, err) {
			found = found || (fe.Field == "targets[2].url" && strings.Contains(fe.Msg, "needs tls:// or targets[2].nats.tls"))
		}
		require.True(t, found, "a plaintext NATS target: got %v", err)
		_, err = Parse("p.yaml", []byte(secure+target+"    nats:\n      tls:\n        ca_file: "+ca+"\n"), noEnv)
		require.NoError(t, err, "nats:// with the target's nats.tls is TLS")
	})
	t.Run("kafka target", func(t *testing.T) {
		target := "  - name: topic\n    kind: kafka\n    url: k1:9092\n    ledger_url: postgres://u:l@h3/ledger?sslmode=verify-full\n    kafka:\n      topic: out\n"
		_, err := Parse("p.yaml", []byte(secure+target), noEnv)
		want := map[string]string{"targets[2].kafka.tls": "production mode needs TLS", "targets[2].kafka.sasl": "production mode needs SASL"}
		for _, fe := range fieldErrors(t, err) {
			if msg, ok := want[fe.Field]; ok && strings.Contains(fe.Msg, msg) {
				delete(want, fe.Field)
			}
		}
		require.Empty(t, want, "a plaintext kafka target without a login: got %v", err)
		_, err = Parse("p.yaml", []byte(secure+target+"      tls: {enabled: true}\n      sasl: {mechanism: scram-sha-256, user: w, password: k4fka-pw}\n"), noEnv)
		require.NoError(t, err, "TLS and SASL pass production mode")
		_, err = Parse("p.yaml", []byte(secure+target+"      sasl: {mechanism: plain, password: k4fka-pw}\n"), noEnv)
		var found bool
		for _, fe := range fieldErrors(t, err) {
			found = found || (fe.Field == "targets[2].kafka.sasl.user" && strings.Contains(fe.Msg, "required"))
			require.NotContains(t, fe.Error(), "k4fka-pw")
		}
		require.True(t, found, "sasl without a user: got %v", err)
	})
	t.Run("loopback is not a transport", func(t *testing.T) {
		src := strings.Replace(secure, "tls://nats-1:4222,tls://nats-2:4222", "nats://127.0.0.1:4222", 1)
		_, err := Parse("p.yaml", []byte(src), noEnv)
		require.NoError(t, err)
	})
}

func TestNATSAuthSettings(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "svc.creds")
	require.NoError(t, os.WriteFile(creds, []byte("x"), 0o600))
	withNATS := func(lines string) string { return base + "nats:\n  url: nats://n:4222\n" + lines }
	// A NATS target takes the same settings under targets[1].nats.
	withTarget := func(lines string) string {
		return base + "  - name: bus\n    kind: nats\n    url: nats://sink:4222\n    ledger_url: postgres://u:l@h3/ledger\n    nats:\n      subject: out.inv\n" + lines
	}
	tests := []struct {
		name, src, field, msg string
	}{
		{"target: two kinds", withTarget("      user: u\n      nkey_file: " + creds + "\n"), "targets[1].nats", "not user/password and nkey_file"},
		{"target: password without user", withTarget("      password: p\n"), "targets[1].nats.password", "needs targets[1].nats.user"},
		{"target: missing CA file", withTarget("      tls:\n        ca_file: " + filepath.Join(dir, "nope.pem") + "\n"), "targets[1].nats.tls.ca_file", "cannot read"},
		{"target: inbox prefix with a wildcard", withTarget("      inbox_prefix: _INBOX.>\n"), "targets[1].nats.inbox_prefix", "not a subject prefix"},
		{"target settings on a postgres target", strings.Replace(base, "    url: postgres://u:tgtpass@h2/db\n", "    url: postgres://u:tgtpass@h2/db\n    nats:\n      user: u\n", 1), "targets[0].nats", "only allowed when kind is \"nats\""},
		{"two kinds", withNATS("  token: t\n  creds_file: " + creds + "\n"), "nats", "not token and creds_file"},
		{"password without user", withNATS("  password: p\n"), "nats.password", "needs nats.user"},
		{"missing creds file", withNATS("  creds_file: " + filepath.Join(dir, "nope.creds") + "\n"), "nats.creds_file", "cannot read"},
		{"cert without key", withNATS("  tls:\n    cert_file: " + creds + "\n"), "nats.tls", "go together"},
		{"credentials for the embedded server", base + "nats:\n  token: t\n", "nats.url", "set nats.url"},
		{"inbox prefix with a wildcard", withNATS("  inbox_prefix: _INBOX.*\n"), "nats.inbox_prefix", "not a subject prefix"},
		{"inbox prefix with a space", withNATS("  inbox_prefix: _INBOX reader\n"), "nats.inbox_prefix", "not a subject prefix"},
		{"inbox prefix with an empty token", withNATS("  inbox_prefix: _INBOX..r\n"), "nats.inbox_prefix", "not a subject prefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.src), noEnv)
			require.Error(t, err)
			var found bool
			for _, fe := range fieldErrors(t, err) {
				found = found || (fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg))
			}
			require.True(t, found, "want %s: …%s…, got %v", tc.field, tc.msg, err)
		})
	}
	p, err := Parse("p.yaml", []byte(withNATS("  user: svc\n  password: s3cret\n  inbox_prefix: _INBOX_svc.a-1\n  tls:\n    ca_file: "+creds+"\n")), noEnv)
	require.NoError(t, err)
	require.Equal(t, "_INBOX_svc.a-1", p.NATS.InboxPrefix)
	var out strings.Builder
	require.NoError(t, p.Print(&out))
	require.NotContains(t, out.String(), "s3cret")
	require.Contains(t, out.String(), "ca_file: "+creds)

	p, err = Parse("p.yaml", []byte(withTarget("      user: sink\n      password: t4rget-pw\n      inbox_prefix: _INBOX_sink\n      tls:\n        ca_file: "+creds+"\n")), noEnv)
	require.NoError(t, err)
	got := p.Targets[1].NATS
	require.Equal(t, NATSTarget{Subject: "out.inv", NATSAuth: NATSAuth{User: "sink", Password: "t4rget-pw", InboxPrefix: "_INBOX_sink",
		TLS: TLS{CAFile: creds}}}, got)
	out.Reset()
	require.NoError(t, p.Print(&out))
	require.NotContains(t, out.String(), "t4rget-pw")
	require.Contains(t, out.String(), "inbox_prefix: _INBOX_sink")
}
