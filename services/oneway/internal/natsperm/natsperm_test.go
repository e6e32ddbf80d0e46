package natsperm

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/oneway-sync/oneway/shared/config"
)

var update = flag.Bool("update", false, "rewrite deploy/nats/permissions.conf from deploy/examples/invoices-staged.yaml")

// The shipped permissions file is the generator's output for the shipped
// example pipeline: edit the generator (and run this test with -update),
// never the file.
func TestShippedFile(t *testing.T) {
	root := filepath.Join("..", "..", "..", "..")
	for _, v := range []string{"ONEWAY_SOURCE_URL", "ONEWAY_TARGET_URL"} {
		t.Setenv(v, "postgres://example/db")
	}
	const example = "deploy/examples/invoices-staged.yaml"
	cfgs, err := config.LoadAll(filepath.Join(root, example))
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := Write(&got, FromConfigs(cfgs), Options{File: example}); err != nil {
		t.Fatal(err)
	}
	shipped := filepath.Join(root, "deploy", "nats", "permissions.conf")
	if *update {
		if err := os.WriteFile(shipped, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("deploy/nats/permissions.conf is not what `oneway permissions --config %s` writes: run `make permissions`\n--- written:\n%s", example, got.String())
	}
}

// The output loads as a NATS server config whose users hold the grants
// each pipeline and target needs, and only their own.
func TestWriteLoadsAsServerConfig(t *testing.T) {
	tests := []struct {
		name   string
		ps     []Pipeline
		prefix string
	}{
		{"one pipeline, one target", []Pipeline{{Name: "invoices", Targets: []string{"pg"}}}, ""},
		{"tables and targets", []Pipeline{{Name: "shop_orders", Targets: []string{"pg", "search"}}, {Name: "shop_items", Targets: []string{"pg", "search"}}}, ""},
		{"user prefix", []Pipeline{{Name: "orders", Targets: []string{"pg"}}}, "orders_"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := Write(&b, tt.ps, Options{UserPrefix: tt.prefix}); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "permissions.conf")
			if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, u := range Users {
				t.Setenv(PasswordVar(tt.prefix, u), "pw-"+u)
			}
			opts, err := server.ProcessConfigFile(path)
			if err != nil {
				t.Fatalf("the output does not load as a server config: %v\n%s", err, b.String())
			}
			users := map[string]*server.User{}
			for _, u := range opts.Users {
				users[u.Username] = u
			}
			if len(users) != len(Users) {
				t.Fatalf("%d users, want %d", len(users), len(Users))
			}
			allow := func(user string) []string {
				u := users[tt.prefix+user]
				if u == nil {
					t.Fatalf("no user %s%s", tt.prefix, user)
				}
				if u.Password != "pw-"+user {
					t.Errorf("user %s: password %q, want the one of %s", u.Username, u.Password, PasswordVar(tt.prefix, user))
				}
				if got := u.Permissions.Subscribe.Allow; !slices.Equal(got, []string{InboxPrefix(tt.prefix, user) + ".>"}) {
					t.Errorf("user %s may subscribe to %v, want its inbox only", u.Username, got)
				}
				return u.Permissions.Publish.Allow
			}
			has := func(user string, subjects ...string) {
				t.Helper()
				got := allow(user)
				for _, s := range subjects {
					if !slices.Contains(got, s) {
						t.Errorf("user %s may not publish %s", user, s)
					}
				}
			}
			for _, p := range tt.ps {
				st := "ONEWAY_" + strings.ToUpper(p.Name)
				has("reader", "oneway."+p.Name+".source", "oneway."+p.Name+".target.*", "$JS.API.STREAM.PURGE."+st,
					"$KV.ONEWAY_STATE."+p.Name+".>", "$JS.API.CONSUMER.MSG.NEXT.OBJ_ONEWAY_CAPTURE.>")
				for _, tg := range p.Targets {
					d := "writer-" + p.Name + "-" + tg
					has("writer", "oneway."+p.Name+".dlq."+tg, "oneway."+p.Name+".applied."+tg,
						"$JS.API.CONSUMER.CREATE."+st+"."+d, "$JS.API.CONSUMER.MSG.NEXT."+st+"."+d,
						"$JS.API.CONSUMER.INFO."+st+"."+d, "$JS.ACK."+st+"."+d+".>")
				}
				has("stager", "oneway."+p.Name+".staged", "$JS.API.CONSUMER.INFO."+st+".stager-"+p.Name)
				has("differ", "oneway."+p.Name+".push.*", "$JS.API.CONSUMER.INFO."+st+".differ-"+p.Name)
				has("status", "$JS.API.CONSUMER.INFO."+st+".*")
				has("operator", "oneway."+p.Name+".>", "$JS.API.STREAM.*."+st,
					"$JS.API.CONSUMER.MSG.NEXT."+st+".>") // replay's consumer: MSG.NEXT is two tokens, beyond CONSUMER.*
			}
			// No grant is wider than a pipeline, and the reader may not
			// delete the stream or another service's consumer.
			for _, u := range Users {
				for _, s := range allow(u) {
					if s == ">" || strings.HasPrefix(s, "oneway.>") || s == "$JS.API.>" || strings.HasPrefix(s, "$JS.API.STREAM.*.*") {
						t.Errorf("user %s may publish %s: far more than a pipeline", u, s)
					}
				}
			}
			for _, s := range allow("reader") {
				if strings.Contains(s, "STREAM.DELETE") || strings.Contains(s, "CONSUMER.DELETE.ONEWAY_") {
					t.Errorf("the reader may publish %s", s)
				}
			}
		})
	}
}

func TestWriteRefuses(t *testing.T) {
	tests := []struct {
		name string
		ps   []Pipeline
		o    Options
		want string
	}{
		{"no pipeline", nil, Options{}, "no pipeline"},
		{"bad prefix", []Pipeline{{Name: "p"}}, Options{UserPrefix: "Orders-"}, `user prefix "Orders-"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Write(&bytes.Buffer{}, tt.ps, tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}
