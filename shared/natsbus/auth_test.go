package natsbus_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
)

// testCA writes a CA and a server certificate for 127.0.0.1 into dir and
// returns the CA file and the server's TLS config.
func testCA(t *testing.T, dir string) (caFile string, serverTLS *tls.Config) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "oneway test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}},
		MinVersion:   tls.VersionTLS12,
	}
}

// TestAuthOptions connects to a real server that requires TLS and a user
// and password: the right settings connect; a wrong password, or a CA that
// did not sign the server's certificate, fail at once with a clear error
// (the 20 s context is shorter than the 30 s wait for a server, so waiting
// would end in a context error instead).
func TestAuthOptions(t *testing.T) {
	dir := t.TempDir()
	caFile, srvTLS := testCA(t, dir)
	otherCA, _ := testCA(t, t.TempDir())
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
