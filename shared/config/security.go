package config

import (
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
)

// validateAuth checks the NATS connection settings of the pipeline's bus.
func (n *NATS) validateAuth(c *checker) {
	n.NATSAuth.validate(c, "nats")
	if n.URL == "" && (n.NATSAuth.hasCredentials() || n.TLS.Enabled()) {
		c.add("nats.url", "credentials and TLS are for an external NATS server; set nats.url")
	}
}

// validate checks NATS credentials and TLS settings given at path (nats,
// targets[0].nats): at most one kind of credentials, a password only with
// a user, files that exist, a client certificate with its key, and an
// inbox prefix that is a subject prefix.
func (n *NATSAuth) validate(c *checker, path string) {
	kinds := []string{}
	if n.User != "" || n.Password != "" {
		kinds = append(kinds, "user/password")
	}
	if n.Token != "" {
		kinds = append(kinds, "token")
	}
	if n.NKeyFile != "" {
		kinds = append(kinds, "nkey_file")
	}
	if n.CredsFile != "" {
		kinds = append(kinds, "creds_file")
	}
	if len(kinds) > 1 {
		c.add(path, "give one kind of credentials, not %s", strings.Join(kinds, " and "))
	}
	if n.Password != "" && n.User == "" {
		c.add(path+".password", "needs %s.user", path)
	}
	for _, f := range []struct{ field, path string }{
		{path + ".nkey_file", n.NKeyFile}, {path + ".creds_file", n.CredsFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			c.add(f.field, "cannot read %s: %v", f.path, err)
		}
	}
	n.TLS.validate(c, path+".tls")
	if n.InboxPrefix != "" && !inboxPrefixRe.MatchString(n.InboxPrefix) {
		c.add(path+".inbox_prefix", "%q is not a subject prefix: tokens of letters, digits, _ and - separated by dots", n.InboxPrefix)
	}
}

// validate checks TLS settings given at path: files that exist and a
// client certificate with its key.
func (t TLS) validate(c *checker, path string) {
	for _, f := range []struct{ field, path string }{
		{path + ".ca_file", t.CAFile}, {path + ".cert_file", t.CertFile}, {path + ".key_file", t.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			c.add(f.field, "cannot read %s: %v", f.path, err)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		c.add(path, "cert_file and key_file go together")
	}
}

// validate checks Kafka TLS and SASL settings given at path (source.kafka,
// targets[0].kafka).
func (k KafkaAuth) validate(c *checker, path string) {
	k.TLS.validate(c, path+".tls")
	s := k.SASL
	switch s.Mechanism {
	case "":
		if s.User != "" || s.Password != "" {
			c.add(path+".sasl.mechanism", "required with a user or password: %s, %s or %s", SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512)
		}
		return
	case SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512:
	default:
		c.add(path+".sasl.mechanism", "unsupported mechanism %q (supported: %s, %s, %s)", clip(s.Mechanism), SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512)
	}
	if s.User == "" {
		c.add(path+".sasl.user", "required with sasl.mechanism")
	}
	if s.Password == "" {
		c.add(path+".sasl.password", "required with sasl.mechanism")
	}
}

// inboxPrefixRe matches a literal subject prefix: no wildcards, no empty
// tokens, no spaces.
var inboxPrefixRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// hasCredentials reports whether credentials are configured.
func (n *NATSAuth) hasCredentials() bool {
	return n.User != "" || n.Password != "" || n.Token != "" || n.NKeyFile != "" || n.CredsFile != ""
}

// hasCredentials reports whether NATS credentials are configured, in the
// config or in the URL's user info.
func (n *NATS) hasCredentials() bool {
	if n.NATSAuth.hasCredentials() {
		return true
	}
	for _, u := range strings.Split(n.URL.Value(), ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); err == nil && pu.User != nil {
			return true
		}
	}
	return false
}

// validateProduction refuses, in production mode, every setting that sends
// data or credentials in clear or drops a durability guarantee. Each error
// names the setting and what to use instead.
func (p *Pipeline) validateProduction(c *checker) {
	if !p.Production {
		return
	}
	n := &p.NATS
	if n.URL == "" {
		c.add("nats.url", "production mode needs an external NATS cluster: the embedded server (empty nats.url) has no replicas and no TLS")
	} else {
		for _, u := range strings.Split(n.URL.Value(), ",") {
			if insecureNATS(strings.TrimSpace(u), n.TLS) {
				c.add("nats.url", "%s is plaintext; production mode needs tls:// or nats.tls", Secret(strings.TrimSpace(u)))
				break
			}
		}
		if !n.hasCredentials() {
			c.add("nats", "production mode needs NATS credentials (user/password, token, nkey_file or creds_file)")
		}
	}
	checkPG := func(field string, s Secret) {
		if s == "" {
			return
		}
		if mode := sslMode(s.Value()); mode != "verify-full" && mode != "verify-ca" {
			c.add(field, "sslmode=%s is not verified TLS; production mode needs sslmode=verify-full (or verify-ca) with sslrootcert", mode)
		}
	}
	if p.Source.Kind == KindPostgres {
		checkPG("source.url", p.Source.URL)
	}
	if p.Source.Kind == KindHTTP {
		if u, err := url.Parse(p.Source.URL.Value()); err == nil && u.Scheme == "http" && !loopback(u.Hostname()) {
			c.add("source.url", "http:// sends the API's headers (its credentials) in clear; production mode needs https://")
		}
	}
	if p.Source.Kind == KindKafka {
		p.Source.Kafka.KafkaAuth.checkProduction(c, "source.kafka")
	}
	if p.Staged() {
		if p.Stage.URL == "" {
			c.add("stage.url", "production mode needs a PostgreSQL stage: the embedded one is a file on one machine")
		}
		checkPG("stage.url", p.Stage.URL)
	}
	for i := range p.Targets {
		t := &p.Targets[i]
		path := indexPath("targets", i)
		checkPG(path+".ledger_url", t.LedgerURL)
		switch t.Kind {
		case KindPostgres:
			checkPG(path+".url", t.URL)
		case KindHTTP:
			if u, err := url.Parse(t.URL.Value()); err == nil && u.Scheme == "http" && !loopback(u.Hostname()) {
				c.add(path+".url", "http:// sends records and headers in clear; production mode needs https://")
			}
		case KindNATS:
			if t.URL != "" && insecureNATS(t.URL.Value(), t.NATS.TLS) {
				c.add(path+".url", "nats:// is plaintext; production mode needs tls:// or %s.nats.tls", path)
			}
		case KindKafka:
			t.Kafka.KafkaAuth.checkProduction(c, path+".kafka")
		}
	}
}

// insecureNATS reports a nats:// URL to a non-loopback host without TLS.
// checkProduction refuses, in production mode, Kafka brokers reached
// without TLS or without SASL credentials.
func (k KafkaAuth) checkProduction(c *checker, path string) {
	if !k.TLS.Enabled() {
		c.add(path+".tls", "production mode needs TLS to the brokers (%s.tls.enabled: true, or a ca_file)", path)
	}
	if k.SASL.Mechanism == "" {
		c.add(path+".sasl", "production mode needs SASL credentials (%s.sasl: mechanism, user, password)", path)
	}
}

func insecureNATS(raw string, tls TLS) bool {
	if tls.Enabled() {
		return false
	}
	u, err := url.Parse(raw)
	if err != nil {
		return true
	}
	return u.Scheme != "tls" && !loopback(u.Hostname())
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sslMode returns a PostgreSQL connection string's effective sslmode, as
// libpq and pgx read it: the URL query or keyword/value setting, else
// PGSSLMODE, else "prefer".
func sslMode(conn string) string {
	if strings.Contains(conn, "://") {
		if u, err := url.Parse(conn); err == nil {
			if m := u.Query().Get("sslmode"); m != "" {
				return m
			}
		}
	} else {
		for _, f := range strings.Fields(conn) {
			if v, ok := strings.CutPrefix(f, "sslmode="); ok {
				return strings.Trim(v, "'")
			}
		}
	}
	if m := os.Getenv("PGSSLMODE"); m != "" {
		return m
	}
	return "prefer"
}
