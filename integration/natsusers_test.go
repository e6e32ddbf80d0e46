package integration

import (
	"maps"
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// serverUsers loads a NATS server config file with env set (the variables
// the file reads) and returns its users' passwords by user name.
func serverUsers(t *testing.T, conf string, env map[string]string) map[string]string {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("NATS server config %s: %v", conf, err)
	}
	users := map[string]string{}
	for _, u := range opts.Users {
		users[u.Username] = u.Password
	}
	if len(users) == 0 {
		t.Fatalf("NATS server config %s has no users: every client could do anything", conf)
	}
	return users
}

// checkNATSUser checks that a service's environment logs it in to a server
// with users (from serverUsers) as user want, with that user's password and
// its own inbox prefix (the pipeline file reads these variables).
func checkNATSUser(t *testing.T, users map[string]string, env map[string]string, want string) {
	t.Helper()
	u := env["ONEWAY_NATS_USER"]
	pw, ok := users[u]
	switch {
	case u != want:
		t.Errorf("ONEWAY_NATS_USER is %q, want %q", u, want)
	case !ok:
		t.Errorf("NATS user %q is not one of the server's %v", u, slices.Sorted(maps.Keys(users)))
	case pw == "" || env["ONEWAY_NATS_PASSWORD"] != pw:
		t.Errorf("ONEWAY_NATS_PASSWORD is not the password the server gives user %q", u)
	}
	if got := env["ONEWAY_NATS_INBOX_PREFIX"]; got != "_INBOX_"+want {
		t.Errorf("ONEWAY_NATS_INBOX_PREFIX is %q, want %q (replies to this user only)", got, "_INBOX_"+want)
	}
}
