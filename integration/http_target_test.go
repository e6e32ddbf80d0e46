package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// fakeAPI is a REST API that stores the last body PUT per key and can be
// switched down (503).
type fakeAPI struct {
	mu     sync.Mutex
	bodies map[string]map[string]any
	down   atomic.Bool
}

func (a *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.down.Load() {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/invoices/")
	a.mu.Lock()
	defer a.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.bodies[key] = m
	case http.MethodDelete:
		delete(a.bodies, key)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *fakeAPI) count(field, value string) (n, all int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.bodies {
		if fmt.Sprint(b[field]) == value {
			n++
		}
	}
	return n, len(a.bodies)
}

// One pipeline, two targets of different kinds, each with its own consumer:
// the HTTP API is down (503) for a while and the PostgreSQL target does not
// wait for it; when the API comes back it catches up, with no dead letters.
func TestTwoTargetKindsOneDown(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	ledger := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 3000)
	api := &fakeAPI{bodies: map[string]map[string]any{}}
	api.down.Store(true)
	srv := httptest.NewServer(api)
	defer srv.Close()

	cfg := testenv.Config(t, "", src.URL, dst.URL, fmt.Sprintf(`      max_attempts: 2
  - name: api
    kind: http
    url: "%s/invoices/{{.Key | path}}"
    ledger_url: %q
    writer: {max_attempts: 2, ack_wait: 2s}
    http: {max_attempts: 2, concurrency: 4}
`, srv.URL, ledger))
	up := testenv.Start(t, "oneway", "up", "--config", cfg, "--data-dir", t.TempDir(), "--log-format", "json")

	testenv.WaitFor(t, syncTimeout, func() error { return countIs(dst, 3000) })
	if _, n := api.count("status", "open"); n != 0 {
		t.Fatalf("the API got %d records while down", n)
	}
	api.down.Store(false)
	testenv.WaitFor(t, syncTimeout, func() error {
		if n, all := api.count("status", "open"); n != 3000 || all != 3000 {
			return fmt.Errorf("API has %d records, %d open", all, n)
		}
		return nil
	})
	src.Exec(t, "UPDATE public.invoices SET status = 'paid', updated_at = now() WHERE id <= 100")
	testenv.WaitFor(t, time.Minute, func() error {
		if n, _ := api.count("status", "paid"); n != 100 {
			return fmt.Errorf("API has %d paid records", n)
		}
		if n := dst.Int(t, "SELECT count(*) FROM public.invoices WHERE status = 'paid'"); n != 100 {
			return fmt.Errorf("target has %d paid rows", n)
		}
		return nil
	})
	api.mu.Lock()
	b := api.bodies["42"]
	api.mu.Unlock()
	if b["customer"] != "customer 42" || fmt.Sprint(b["amount"]) != "10.5" || b["id"] != float64(42) {
		t.Fatalf("API body for 42 = %v", b)
	}
	up.Stop(t, 30*time.Second)
	if strings.Contains(up.Output(), "dead-lettered") {
		t.Fatalf("changes were dead-lettered during the API outage:\n%s", up.Output())
	}
	r := mustVerify(t, cfg, 0)
	if !strings.Contains(r.Stdout, "target api (http): skipped") {
		t.Fatalf("verify did not say it skipped the http target:\n%s", r.Stdout)
	}
}
