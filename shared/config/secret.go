package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
)

// mask replaces credentials in redacted strings.
const mask = "xxxxx"

var (
	// urlStartRe finds the commas that separate URLs in a list such as
	// "nats://a:4222,nats://b:4222".
	urlStartRe = regexp.MustCompile(`,\s*[A-Za-z][A-Za-z0-9+.\-]*://`)
	// queryPasswordRe finds password parameters in a URL's query.
	queryPasswordRe = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)
	// keywordPasswordRe finds password settings in a keyword/value
	// connection string ("host=a password='s e c' user=b").
	keywordPasswordRe = regexp.MustCompile(`(?i)((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)`)
)

// Secret is a credential-bearing string, typically a connection URL. Its
// String, GoString, MarshalYAML, MarshalJSON and LogValue methods redact
// passwords; Value returns the real string.
type Secret string

// Value returns the unredacted string.
func (s Secret) Value() string { return string(s) }

// String returns the string with passwords replaced by "xxxxx":
// "postgres://u:xxxxx@h/db", "nats://xxxxx@h" (a user-only token) and
// "host=h password=xxxxx".
func (s Secret) String() string { return redact(string(s)) }

// GoString redacts like String, for the %#v verb.
func (s Secret) GoString() string { return fmt.Sprintf("config.Secret(%q)", s.String()) }

// MarshalYAML writes the redacted string.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON writes the redacted string.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// LogValue logs the redacted string.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// redact replaces the credentials in a URL, a comma-separated list of URLs
// or a keyword/value connection string. When in doubt it masks too much
// rather than too little.
func redact(s string) string {
	if s == "" {
		return s
	}
	if !strings.Contains(s, "://") {
		if r, ok := redactMySQLDSN(s); ok {
			return r
		}
		if strings.Contains(s, "=") {
			return keywordPasswordRe.ReplaceAllString(s, "${1}"+mask)
		}
		// "user:pass@host:4222", a server address without a scheme.
		return redactUserinfo(s, 0)
	}
	var b strings.Builder
	start := 0
	for _, loc := range urlStartRe.FindAllStringIndex(s, -1) {
		b.WriteString(redactURL(s[start : loc[0]+1]))
		start = loc[0] + 1
	}
	b.WriteString(redactURL(s[start:]))
	return b.String()
}

// redactURL redacts one URL: its user information and any password
// parameter in its query.
func redactURL(u string) string {
	i := strings.Index(u, "://")
	if i < 0 {
		return redactUserinfo(u, 0)
	}
	u = redactUserinfo(u, i+len("://"))
	if q := strings.IndexByte(u, '?'); q >= 0 {
		u = u[:q] + queryPasswordRe.ReplaceAllString(u[q:], "${1}"+mask)
	}
	return u
}

// redactUserinfo masks the user information of the authority starting at
// u[start:]: the password when there is one, else the whole user part (a
// token). The user information ends at the last "@" before any query or
// fragment, so an unescaped "/" or "@" in a password does not leak it.
func redactUserinfo(u string, start int) string {
	end := len(u)
	if j := strings.IndexAny(u[start:], "?#"); j >= 0 {
		end = start + j
	}
	at := strings.LastIndexByte(u[start:end], '@')
	if at < 0 {
		return u
	}
	userinfo := u[start : start+at]
	masked := mask
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		masked = user + ":" + mask
	}
	return u[:start] + masked + u[start+at:]
}

// mysqlNetRe is the protocol(address) part of a MySQL DSN.
var mysqlNetRe = regexp.MustCompile(`^[A-Za-z0-9]+\(.*\)$`)

// redactMySQLDSN masks the password of a go-sql-driver DSN,
// "user:pass@tcp(host:port)/db?params", splitting it as the driver does:
// at the last "/", then the last "@" before it, then the first ":". ok is
// false when s is not shaped like one.
func redactMySQLDSN(s string) (string, bool) {
	slash := strings.LastIndexByte(s, '/')
	if slash <= 0 {
		return "", false
	}
	at := strings.LastIndexByte(s[:slash], '@')
	if at < 0 {
		return "", false
	}
	if netAddr := s[at+1 : slash]; netAddr != "" && !mysqlNetRe.MatchString(netAddr) {
		return "", false
	}
	colon := strings.IndexByte(s[:at], ':')
	if colon < 0 {
		return s, true // a user without a password
	}
	return s[:colon+1] + mask + s[at:], true
}
