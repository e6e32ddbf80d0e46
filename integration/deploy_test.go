package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// obj is one parsed Kubernetes object.
type obj map[string]any

func (o obj) get(path ...string) any {
	var cur any = map[string]any(o)
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func (o obj) str(path ...string) string { s, _ := o.get(path...).(string); return s }
func (o obj) kindName() string          { return o.str("kind") + "/" + o.str("metadata", "name") }

func asObj(v any) obj { m, _ := v.(map[string]any); return obj(m) }

func asList(v any) []any { l, _ := v.([]any); return l }

// loadManifests parses every document of the kustomization's resources.
func loadManifests(t *testing.T, dir string) (obj, []obj) {
	t.Helper()
	kust := parseYAMLDocs(t, filepath.Join(dir, "kustomization.yaml"))[0]
	var objs []obj
	for _, r := range asList(kust.get("resources")) {
		objs = append(objs, parseYAMLDocs(t, filepath.Join(dir, r.(string)))...)
	}
	return kust, objs
}

func parseYAMLDocs(t *testing.T, path string) []obj {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []obj
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if m != nil {
			out = append(out, obj(m))
		}
	}
}

// TestKubernetesManifests validates deploy/kustomization.yaml and k8s/ without a cluster: the
// objects, their required fields, probes on the services' own endpoints,
// resources, container args the binaries accept, the pipeline file loading
// with the Deployment's environment, each service logging in to NATS as its
// user of the file the NATS pods run (with the password both read from
// the same Secret), and KEDA's ScaledObject pointing at the writer's real
// stream and durable consumer.
func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join(repoRoot(), "deploy")
	kust, objs := loadManifests(t, dir)
	byKind := map[string][]obj{}
	for _, o := range objs {
		if o.str("apiVersion") == "" || o.str("kind") == "" || o.str("metadata", "name") == "" {
			t.Errorf("object without apiVersion, kind or metadata.name: %v", o)
		}
		byKind[o.str("kind")] = append(byKind[o.str("kind")], o)
	}
	for kind, n := range map[string]int{"Namespace": 1, "Service": 1, "StatefulSet": 1, "Deployment": 5, "PodDisruptionBudget": 6, "ScaledObject": 1} {
		if len(byKind[kind]) != n {
			t.Errorf("%d %s objects, want %d", len(byKind[kind]), kind, n)
		}
	}
	// Generated ConfigMaps come from files that exist.
	for _, g := range asList(kust.get("configMapGenerator")) {
		for _, f := range asList(asObj(g).get("files")) {
			_, src, _ := strings.Cut(f.(string), "=")
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("configMapGenerator %s: %v", asObj(g).str("name"), err)
			}
		}
	}
	secrets := map[string]obj{} // by name: stringData
	for _, sec := range parseYAMLDocs(t, filepath.Join(dir, "k8s", "secret.example.yaml")) {
		secrets[sec.str("metadata", "name")] = asObj(sec.get("stringData"))
	}
	// podEnv is a container's environment as its pod would see it, with the
	// example Secrets' values and fieldRef as nats-0's.
	podEnv := func(t *testing.T, c obj) map[string]string {
		env := map[string]string{}
		for _, ref := range asList(c.get("envFrom")) {
			name := asObj(ref).str("secretRef", "name")
			sec, ok := secrets[name]
			if !ok {
				t.Fatalf("container %s: envFrom names Secret %q, which secret.example.yaml lacks", c.str("name"), name)
			}
			for k, v := range sec {
				env[k] = v.(string)
			}
		}
		for _, e := range asList(c.get("env")) {
			e := asObj(e)
			switch {
			case e.get("valueFrom", "secretKeyRef") != nil:
				name, key := e.str("valueFrom", "secretKeyRef", "name"), e.str("valueFrom", "secretKeyRef", "key")
				v, ok := secrets[name][key].(string)
				if !ok {
					t.Fatalf("container %s: %s comes from key %s of Secret %s, which secret.example.yaml lacks", c.str("name"), e.str("name"), key, name)
				}
				env[e.str("name")] = v
			case e.get("valueFrom", "fieldRef") != nil:
				env[e.str("name")] = "nats-0"
			default:
				env[e.str("name")] = e.str("value")
			}
		}
		return env
	}
	// The NATS users, from the file the NATS pods run with their environment.
	if len(byKind["StatefulSet"]) != 1 {
		t.Fatalf("%d StatefulSets, want the one of NATS", len(byKind["StatefulSet"]))
	}
	natsC := asObj(asList(byKind["StatefulSet"][0].get("spec", "template", "spec", "containers"))[0])
	natsFiles := map[string]string{} // in /etc/nats → under deploy/
	for _, g := range asList(kust.get("configMapGenerator")) {
		if asObj(g).str("name") == "nats-config" {
			for _, f := range asList(asObj(g).get("files")) {
				key, src, _ := strings.Cut(f.(string), "=")
				natsFiles["/etc/nats/"+key] = filepath.Join(dir, src)
			}
		}
	}
	natsArgs := asList(natsC.get("args"))
	if len(natsArgs) != 2 || natsArgs[0] != "-c" || natsFiles[fmt.Sprint(natsArgs[1])] == "" {
		t.Fatalf("NATS args %v: want -c and a file of the nats-config ConfigMap %v", natsArgs, natsFiles)
	}
	// The generator flattens the files into one directory, as include
	// paths beside each other expect.
	flat := t.TempDir()
	for in, src := range natsFiles {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(flat, filepath.Base(in)), string(b))
	}
	users := serverUsers(t, filepath.Join(flat, filepath.Base(fmt.Sprint(natsArgs[1]))), podEnv(t, natsC))
	// The user each Deployment's service logs in as.
	natsUser := map[string]string{"reader": "reader", "readback-pg": "reader", "stager": "stager", "differ": "differ", "writer": "writer"}

	pdbSelectors := map[string]bool{}
	for _, p := range byKind["PodDisruptionBudget"] {
		pdbSelectors[fmt.Sprint(p.get("spec", "selector", "matchLabels"))] = true
	}
	var pipeline *config.Pipeline
	for _, o := range append(byKind["Deployment"], byKind["StatefulSet"]...) {
		t.Run(o.kindName(), func(t *testing.T) {
			if sel := fmt.Sprint(o.get("spec", "selector", "matchLabels")); !pdbSelectors[sel] {
				t.Errorf("no PodDisruptionBudget selects %s", sel)
			}
			labels := asObj(o.get("spec", "template", "metadata", "labels"))
			for k, v := range asObj(o.get("spec", "selector", "matchLabels")) {
				if labels[k] != v {
					t.Errorf("selector %s=%v does not match the pod template labels", k, v)
				}
			}
			containers := asList(o.get("spec", "template", "spec", "containers"))
			if len(containers) == 0 {
				t.Fatal("no containers")
			}
			for _, c := range containers {
				c := asObj(c)
				if c.str("image") == "" || c.str("resources", "requests", "cpu") == "" ||
					c.str("resources", "requests", "memory") == "" || c.str("resources", "limits", "memory") == "" {
					t.Errorf("container %s: image, cpu/memory requests and a memory limit are required", c.str("name"))
				}
				ports := map[string]bool{}
				for _, p := range asList(c.get("ports")) {
					ports[asObj(p).str("name")] = true
				}
				for _, probe := range []string{"livenessProbe", "readinessProbe"} {
					port := c.str(probe, "httpGet", "port")
					if c.str(probe, "httpGet", "path") == "" || !ports[port] {
						t.Errorf("container %s: %s must be an httpGet on a declared port (got port %q)", c.str("name"), probe, port)
					}
				}
				if o.str("kind") != "Deployment" {
					continue
				}
				svc := c.str("name")
				if c.str("livenessProbe", "httpGet", "path") != "/healthz" || c.str("readinessProbe", "httpGet", "path") != "/readyz" {
					t.Errorf("%s: probes must be /healthz (liveness) and /readyz (readiness)", svc)
				}
				if c.get("securityContext", "readOnlyRootFilesystem") != true {
					t.Errorf("%s: readOnlyRootFilesystem must be true", svc)
				}
				var args []string
				for _, a := range asList(c.get("args")) {
					args = append(args, a.(string))
				}
				if r := testenv.Run(t, time.Minute, svc, append(args, "--help")...); r.Code != 0 {
					t.Errorf("%s: args %v are not accepted: %s", svc, args, r.Stderr)
				}
				// The pipeline file, with the pod's environment.
				env := podEnv(t, c)
				checkNATSUser(t, users, env, natsUser[o.str("metadata", "name")])
				for k := range env {
					if strings.HasPrefix(k, "ONEWAY_NATS_") && strings.HasSuffix(k, "_PASSWORD") && k != "ONEWAY_NATS_PASSWORD" {
						t.Errorf("%s: the pod gets %s, a NATS user's password that is not its own", svc, k)
					}
				}
				for k, v := range env {
					if k == "ONEWAY_CONFIG" {
						v = filepath.Join(repoRoot(), "deploy", "examples", filepath.Base(v))
					}
					t.Setenv(k, v)
				}
				cfg, err := config.Load(os.Getenv("ONEWAY_CONFIG"))
				if err != nil {
					t.Fatalf("%s: the pipeline file does not load with the pod's environment: %v", svc, err)
				}
				if cfg.NATS.Replicas != 3 {
					t.Errorf("%s: stream replicas %d on the 3-node cluster, want 3", svc, cfg.NATS.Replicas)
				}
				pipeline = cfg
			}
		})
	}
	if pipeline == nil {
		t.Fatal("no pipeline loaded")
	}

	nats := byKind["StatefulSet"][0]
	if n, _ := nats.get("spec", "replicas").(int); n != 3 {
		t.Errorf("NATS StatefulSet has %d replicas, want 3", n)
	}
	so := byKind["ScaledObject"][0]
	if so.str("spec", "scaleTargetRef", "name") != "writer" {
		t.Errorf("ScaledObject scales %q, want the writer Deployment", so.str("spec", "scaleTargetRef", "name"))
	}
	trig := asObj(asList(so.get("spec", "triggers"))[0])
	if trig.str("type") != "nats-jetstream" {
		t.Errorf("trigger type %q, want nats-jetstream", trig.str("type"))
	}
	if got, want := trig.str("metadata", "stream"), bus.StreamName(pipeline.Pipeline); got != want {
		t.Errorf("ScaledObject stream %q, want %q", got, want)
	}
	if got, want := trig.str("metadata", "consumer"), bus.WriterConsumer(pipeline.Pipeline, pipeline.Targets[0].Name); got != want {
		t.Errorf("ScaledObject consumer %q, want the writer's durable %q", got, want)
	}
	svcName := byKind["Service"][0].str("metadata", "name")
	if ep := trig.str("metadata", "natsServerMonitoringEndpoint"); !strings.HasPrefix(ep, svcName+".") || !strings.HasSuffix(ep, ":8222") {
		t.Errorf("monitoring endpoint %q is not the %s service's monitor port", ep, svcName)
	}
}

// TestGrafanaDashboardUsesRealMetrics fails when a dashboard query names a
// metric the services do not export (a renamed metric, a typo).
func TestGrafanaDashboardUsesRealMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "grafana", "oneway-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	known := map[string]bool{}
	ch := make(chan *prometheus.Desc, 64)
	go func() { telemetry.NewMetrics("test", "test").Registry.Describe(ch); close(ch) }()
	name := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for desc := range ch {
		if m := name.FindStringSubmatch(desc.String()); m != nil {
			known[m[1]] = true
		}
	}
	used := regexp.MustCompile(`\b(?:oneway|process|go)_[a-z_]+`)
	if len(d.Panels) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range used.FindAllString(tg.Expr, -1) {
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(m, suffix); ok && known[trimmed] {
						base = trimmed
					}
				}
				if !known[base] {
					t.Errorf("panel %q uses %s, which no service exports (known: %v)", p.Title, m, slices.Sorted(maps.Keys(known)))
				}
			}
		}
	}
}
