package kafkaconn

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
)

func TestSettings(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		auth     config.KafkaAuth
		tls      bool
		sasl     string // the mechanism's name, "" for none
		errorHas string
	}{
		{name: "plain text", auth: config.KafkaAuth{}},
		{name: "system roots", auth: config.KafkaAuth{TLS: config.TLS{On: true}}, tls: true},
		{name: "scram-sha-512", auth: config.KafkaAuth{SASL: config.KafkaSASL{Mechanism: config.SASLSCRAMSHA512, User: "u", Password: "pw-1"}}, sasl: "SCRAM-SHA-512"},
		{name: "plain", auth: config.KafkaAuth{SASL: config.KafkaSASL{Mechanism: config.SASLPlain, User: "u", Password: "pw-1"}}, sasl: "PLAIN"},
		{name: "missing CA file", auth: config.KafkaAuth{TLS: config.TLS{CAFile: filepath.Join(dir, "nope.pem")}}, errorHas: "nope.pem"},
		{name: "CA file without PEM", auth: config.KafkaAuth{TLS: config.TLS{CAFile: notPEM}}, errorHas: "no PEM certificate"},
		{name: "unknown mechanism", auth: config.KafkaAuth{SASL: config.KafkaSASL{Mechanism: "gssapi", User: "u", Password: "pw-1"}}, errorHas: `"gssapi"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tlsCfg, mech, err := Settings(tc.auth)
			if tc.errorHas != "" {
				if !errs.IsPermanent(err) || !strings.Contains(err.Error(), tc.errorHas) {
					t.Fatalf("error %v, want a permanent one mentioning %s", err, tc.errorHas)
				}
				if strings.Contains(err.Error(), "pw-1") {
					t.Fatalf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tlsCfg != nil) != tc.tls {
				t.Errorf("TLS config %v, want TLS %v", tlsCfg, tc.tls)
			}
			got := ""
			if mech != nil {
				got = mech.Name()
			}
			if got != tc.sasl {
				t.Errorf("SASL mechanism %q, want %q", got, tc.sasl)
			}
		})
	}
}
