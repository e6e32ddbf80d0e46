package integration

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// oneway's own services in docker-compose.yml: each is built from a
// Dockerfile services/<binary>/Dockerfile into an image whose entrypoint is
// that binary.
var composeServices = []string{"reader", "readback", "stager", "differ", "writer", "status", "oneway"}

// binaryOf is the binary a compose service's image runs.
func binaryOf(svc types.ServiceConfig) string {
	return filepath.Base(filepath.Dir(svc.Build.Dockerfile))
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..")
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithName("oneway"), cli.WithProfiles([]string{"*"}),
		cli.WithResolvedPaths(true), cli.WithEnv([]string{}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

// hostPath maps a path inside a service's container to the host path its
// bind mount serves it from ("" when no mount covers it).
func hostPath(svc types.ServiceConfig, inContainer string) string {
	for _, v := range svc.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if rel, err := filepath.Rel(v.Target, inContainer); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(v.Source, rel)
		}
	}
	return ""
}

// TestComposeFile checks docker-compose.yml against the code without a
// Docker engine: each oneway service's Dockerfile exists and builds that
// service as a static non-root binary, its command, flags and healthcheck
// are ones the binary accepts, its environment satisfies the pipeline file
// it mounts and logs it in to NATS as its user of the server's config, and
// writers can be scaled.
func TestComposeFile(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{"nats", "postgres", "seeder", "reader", "readback", "stager", "differ", "writer", "status", "oneway"} {
		if _, err := p.GetService(name); err != nil {
			t.Errorf("docker-compose.yml: service %s: %v", name, err)
		}
	}
	users := serverUsers(t, natsConfOf(t, p), composeEnv(t, p, "nats"))
	for _, name := range composeServices {
		t.Run(name, func(t *testing.T) {
			svc, err := p.GetService(name)
			if err != nil {
				t.Fatal(err)
			}
			if svc.Build == nil {
				t.Fatal("no build section")
			}
			bin := binaryOf(svc)
			df, err := os.ReadFile(filepath.Join(svc.Build.Context, svc.Build.Dockerfile))
			if err != nil {
				t.Fatalf("Dockerfile: %v", err)
			}
			for _, want := range []string{
				"./cmd/" + bin, "CGO_ENABLED=0", "USER nonroot",
				fmt.Sprintf(`ENTRYPOINT ["/usr/local/bin/%s"]`, bin),
			} {
				if !strings.Contains(string(df), want) {
					t.Errorf("%s lacks %q", svc.Build.Dockerfile, want)
				}
			}
			if len(svc.Command) == 0 {
				t.Fatal("no command")
			}
			// cobra parses flags before it prints help: an unknown
			// subcommand or flag fails here.
			if r := testenv.Run(t, time.Minute, bin, append(slices.Clone([]string(svc.Command)), "--help")...); r.Code != 0 {
				t.Errorf("%s %v is not a valid command line: %s", bin, svc.Command, r.Stderr)
			}
			if name != "oneway" { // the CLI's one-off container has no healthcheck
				hc := svc.HealthCheck
				if hc == nil || len(hc.Test) < 3 || hc.Test[1] != "/usr/local/bin/"+bin {
					t.Fatalf("healthcheck must run the service's own binary, got %+v", hc)
				}
				if r := testenv.Run(t, time.Minute, bin, append(slices.Clone([]string(hc.Test[2:])), "--help")...); r.Code != 0 {
					t.Errorf("healthcheck %v is not a valid command line: %s", hc.Test, r.Stderr)
				}
			}
			if name != "oneway" && name != "status" {
				for _, dep := range []string{"nats", "postgres"} {
					if d, ok := svc.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
						t.Errorf("depends_on %s: want condition service_healthy, got %+v", dep, d)
					}
				}
			}
			// The pipeline file it mounts loads with its environment.
			cfg := svc.Environment["ONEWAY_CONFIG"]
			if cfg == nil {
				t.Fatal("no ONEWAY_CONFIG in environment")
			}
			path := hostPath(svc, *cfg)
			if path == "" {
				t.Fatalf("ONEWAY_CONFIG %s is not under a bind mount", *cfg)
			}
			env := composeEnv(t, p, name)
			checkNATSUser(t, users, env, composeNATSUser[name])
			for k, v := range env {
				if k != "ONEWAY_CONFIG" {
					t.Setenv(k, v)
				}
			}
			if r := testenv.Run(t, time.Minute, bin, "config", "validate", "--config", path); r.Code != 0 {
				t.Errorf("the compose environment does not satisfy %s: %s", path, r.Stderr)
			}
		})
	}
	w, _ := p.GetService("writer")
	if w.ContainerName != "" || len(w.Ports) > 0 {
		t.Errorf("writer has a container_name or host ports: `docker compose up --scale writer=3` would fail")
	}
}

// composeNATSUser is the NATS user of deploy/nats/permissions.conf each of
// oneway's compose services logs in as.
var composeNATSUser = map[string]string{"reader": "reader", "readback": "reader", "stager": "stager", "differ": "differ",
	"writer": "writer", "status": "status", "oneway": "operator"}

// composeEnv is the environment of a compose service (variables the file
// leaves unset take the file's defaults).
func composeEnv(t *testing.T, p *types.Project, name string) map[string]string {
	t.Helper()
	svc, err := p.GetService(name)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for k, v := range svc.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// natsConfOf is the host path of the config file the compose file's NATS
// server runs (its command's -c, under a bind mount).
func natsConfOf(t *testing.T, p *types.Project) string {
	t.Helper()
	svc, err := p.GetService("nats")
	if err != nil {
		t.Fatal(err)
	}
	cmd := []string(svc.Command)
	if len(cmd) != 2 || cmd[0] != "-c" {
		t.Fatalf("nats command %v: want -c and the config file", cmd)
	}
	path := hostPath(svc, cmd[1])
	if path == "" {
		t.Fatalf("nats config %s is not under a bind mount", cmd[1])
	}
	return path
}

// TestComposeStackAsProcesses runs the compose stack's services as local
// processes with the compose file's own commands and environment — hosts
// rewritten to a 3-node JetStream cluster and fresh PostgreSQL databases loaded
// like the postgres container's init script — in staged mode (reader, the
// target's read-back, stager, differ) with three writers, while the demo simulator changes the
// System of Record; `oneway verify` then exits 0. Each service logs in as its
// own NATS user, and the servers refuse nothing.
func TestComposeStackAsProcesses(t *testing.T) {
	p := loadCompose(t)
	// The compose file's single NATS service becomes a 3-node JetStream
	// cluster of built nats-server processes with the same users
	// (deploy/nats/cluster-auth.conf, which includes the permissions.conf
	// of the compose file's server.conf), their passwords from the compose
	// file's NATS environment.
	if conf, err := os.ReadFile(natsConfOf(t, p)); err != nil || !strings.Contains(string(conf), "include ./permissions.conf") {
		t.Fatalf("the compose NATS server's config does not include permissions.conf (%v)", err)
	}
	for k, v := range composeEnv(t, p, "nats") {
		t.Setenv(k, v)
	}
	cluster := testenv.StartNATSClusterFrom(t, "cluster-auth.conf")
	natsURL := cluster.URLs()
	dbs := map[string]string{
		"oneway_demo_source": pgtest.NewDatabase(t),
		"oneway_demo_target": pgtest.NewDatabase(t),
		"oneway_stage":       pgtest.NewDatabase(t),
	}
	examples := filepath.Join(repoRoot(), "deploy", "examples")
	psql(t, dbs["oneway_demo_source"], "-f", filepath.Join(examples, "invoices-source.sql"))
	psql(t, dbs["oneway_demo_target"], "-f", filepath.Join(examples, "invoices-target.sql"))

	// useEnv sets a service's environment (each has its own NATS user),
	// hosts rewritten, and returns the host path of its pipeline file. A
	// process started next inherits it.
	useEnv := func(name string) string {
		svc, _ := p.GetService(name)
		var configPath string
		for k, val := range composeEnv(t, p, name) {
			switch {
			case k == "ONEWAY_CONFIG":
				configPath = hostPath(svc, val)
				val = configPath
			case strings.HasPrefix(val, "nats://"):
				val = natsURL
			case strings.HasPrefix(val, "postgres://"):
				u, err := url.Parse(val)
				if err != nil {
					t.Fatalf("%s: %v", k, err)
				}
				db, ok := dbs[strings.TrimPrefix(u.Path, "/")]
				if !ok {
					t.Fatalf("%s names database %s, which the init script does not create", k, u.Path)
				}
				val = db
			}
			t.Setenv(k, val)
		}
		t.Setenv("ONEWAY_LOG_FORMAT", "text")
		return configPath
	}

	start := func(name string) string {
		useEnv(name)
		svc, _ := p.GetService(name)
		bin := binaryOf(svc)
		args := slices.Clone([]string(svc.Command))
		addr := freeAddr(t)
		for i := range args {
			if (args[i] == "--admin-addr" || args[i] == "--serve") && i+1 < len(args) {
				args[i+1] = addr
			}
		}
		proc := testenv.Start(t, bin, args...)
		probe := "/readyz"
		if name == "status" {
			probe = "/healthz"
		}
		// The compose healthcheck, pointed at this process's admin port.
		testenv.WaitFor(t, time.Minute, func() error {
			if done, code := proc.Exited(); done {
				t.Fatalf("%s exited with %d:\n%s", name, code, proc.Output())
			}
			if r := testenv.Run(t, time.Minute, bin, "healthcheck", "--url", "http://"+addr+probe); r.Code != 0 {
				return fmt.Errorf("%s not ready: %s", name, r.Stderr)
			}
			return nil
		})
		return "http://" + addr
	}
	start("reader")
	start("readback")
	start("stager")
	start("differ")
	for range 3 { // docker compose up --scale writer=3
		start("writer")
	}
	statusURL := start("status")

	seeder, _ := p.GetService("seeder")
	sim := simulatorSQL(t, hostPath(seeder, "/simulate.sh"))
	for range 5 {
		psql(t, dbs["oneway_demo_source"], "-c", sim)
	}
	// docker compose run --rm oneway verify
	configPath := useEnv("oneway")
	testenv.WaitFor(t, 2*time.Minute, func() error {
		if r := testenv.Run(t, time.Minute, "oneway", "verify", "--config", configPath); r.Code != 0 {
			return fmt.Errorf("verify exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
		}
		return nil
	})
	// The status service shows the pipeline with the target in sync.
	testenv.WaitFor(t, time.Minute, func() error {
		s, err := getStatus(statusURL)
		if err != nil {
			return err
		}
		if s.Pipeline != "invoices" || len(s.Targets) != 1 || s.Targets[0].LagMessages != 0 {
			return fmt.Errorf("status: %+v", s)
		}
		return nil
	})
	dst := testenv.Connect(t, dbs["oneway_demo_target"])
	if n := dst.Int(t, "SELECT count(*) FROM public.invoices"); n < 50050 {
		t.Fatalf("target has %d invoices, want the 50,000 seeded plus 50 simulated", n)
	}
	// Each service did its work as its own user, refused nothing.
	for _, line := range strings.Split(cluster.Log(), "\n") {
		if strings.Contains(line, "Violation") {
			t.Errorf("NATS refused a service: %s", line)
		}
	}
}

func psql(t *testing.T, dbURL string, args ...string) {
	t.Helper()
	out, err := exec.Command("psql", append([]string{dbURL, "-q", "-v", "ON_ERROR_STOP=1"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %v: %v\n%s", args, err, out)
	}
}

// simulatorSQL is the SQL of one round of the seeder's simulator script.
func simulatorSQL(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "<<'SQL'\n"), strings.LastIndex(s, "\nSQL\n")
	if i < 0 || j < i {
		t.Fatalf("%s: no <<'SQL' … SQL block", path)
	}
	return s[i+len("<<'SQL'\n") : j]
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
