package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// statusSnapshot is the part of /status.json the tests read.
type statusSnapshot struct {
	Pipeline string `json:"pipeline"`
	Reader   struct {
		Active bool   `json:"active"`
		Phase  string `json:"phase"`
	} `json:"reader"`
	Targets []struct {
		Name        string  `json:"name"`
		LagMessages uint64  `json:"lag_messages"`
		LagSeconds  float64 `json:"lag_seconds"`
		AppliedSeq  uint64  `json:"applied_seq"`
		DeadLetters uint64  `json:"dead_letters"`
	} `json:"targets"`
	History []json.RawMessage `json:"history"`
}

func getStatus(base string) (statusSnapshot, error) {
	var s statusSnapshot
	resp, err := http.Get(base + "/status.json")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return s, json.Unmarshal(b, &s)
}

// startWithStatus runs `oneway up` on a seeded pipeline with its admin
// server on a free port and returns the status base URL once the target is
// in sync.
func startWithStatus(t *testing.T, rows int) (base string) {
	t.Helper()
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, rows)
	_, natsURL := bustest.StartJetStream(t)
	cfg := testenv.Config(t, natsURL, src.URL, dst.URL, "")
	addr := freeAddr(t)
	up := testenv.Start(t, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--admin-addr", addr)
	base = "http://" + addr
	testenv.WaitFor(t, syncTimeout, func() error {
		if done, code := up.Exited(); done {
			t.Fatalf("oneway up exited with %d", code)
		}
		s, err := getStatus(base)
		if err != nil {
			return err
		}
		if len(s.Targets) != 1 || s.Targets[0].LagMessages != 0 || s.Targets[0].AppliedSeq == 0 || !s.Reader.Active {
			return fmt.Errorf("not in sync yet: %+v", s)
		}
		return countIs(dst, int64(rows))
	})
	return base
}

// TestStatusJSONAndCommand: /status.json reports the reader and a target
// in sync with nothing dead-lettered, and `oneway status` prints the same
// as a table and as JSON.
func TestStatusJSONAndCommand(t *testing.T) {
	base := startWithStatus(t, 3000)
	s, err := getStatus(base)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pipeline != "invoices" || s.Reader.Phase != "watermark" || s.Targets[0].Name != "pg" || s.Targets[0].DeadLetters != 0 {
		t.Fatalf("unexpected status: %+v", s)
	}
	// The cores rule (shared/procs): a quiet `oneway up` runs on one P,
	// which /metrics shows.
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && runtime.NumCPU() > 1 {
		testenv.WaitFor(t, 30*time.Second, func() error {
			if body := httpGet(t, base+"/metrics"); !strings.Contains(body, "\ngo_sched_gomaxprocs_threads 1\n") {
				return fmt.Errorf("/metrics: %s, want 1 while quiet", lastLine(body, "go_sched_gomaxprocs_threads"))
			}
			return nil
		})
	}
	r := testenv.Run(t, time.Minute, "oneway", "status", "--url", base)
	if r.Code != 0 || !strings.Contains(r.Stdout, "pipeline invoices") || !strings.Contains(r.Stdout, "reader: active, watermark") {
		t.Fatalf("oneway status: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r = testenv.Run(t, time.Minute, "oneway", "status", "--url", base, "--json")
	var js statusSnapshot
	if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &js) != nil || js.Pipeline != "invoices" {
		t.Fatalf("oneway status --json: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	r = testenv.Run(t, time.Minute, "oneway", "status", "--url", "http://"+freeAddr(t))
	if r.Code == 0 || !strings.Contains(r.Stderr, "no oneway answering") {
		t.Fatalf("status with nothing running: exit %d, want a clear error\n%s", r.Code, r.Stderr)
	}
}

// chromiumPath finds Debian's chromium; under CI=true its absence fails.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH (.ci/run installs Debian's chromium)")
	}
	t.Skip("no chromium on PATH; install Debian's chromium to run the browser test")
	return ""
}

// TestStatusPageInBrowser loads the status page in headless Chromium, finds
// the pipeline, sees the target's lag at 0 and saves a screenshot as a test
// artifact (ONEWAY_TEST_ARTIFACTS, default integration/artifacts).
func TestStatusPageInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	base := startWithStatus(t, 2000)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1200, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The browser lives as long as the context of the first Run: no
	// timeout on it; each step gets its own below.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Minute) }
	sctx, scancel := step()
	defer scancel()
	if err := chromedp.Do(sctx, chromedp.WaitVisible(chromedp.CSS(`[data-testid="target-pg"]`))); err != nil {
		t.Fatalf("the page shows no row for target pg: %v", err)
	}
	if _, err := chromedp.Run(sctx, chromedp.Poll[bool](
		`document.querySelector('[data-testid="lag-messages-pg"]').textContent === "0"`,
		chromedp.WithPollingTimeout(time.Minute))); err != nil {
		t.Fatalf("lag never shown as 0: %v", err)
	}
	text := func(testid string) string {
		v, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(`[data-testid="`+testid+`"]`)))
		if err != nil {
			t.Fatalf("read %s: %v", testid, err)
		}
		return v
	}
	name, lag, state := text("pipeline-name"), text("lag-messages-pg"), text("state-pg")
	shot, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if name != "invoices" || lag != "0" || state != "in sync" {
		t.Fatalf("page shows pipeline %q, lag %q, state %q; want invoices, 0, in sync", name, lag, state)
	}
	dir := os.Getenv("ONEWAY_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(repoRoot(), "integration", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "status-page.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
}
