package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// rejectingAPI answers 400 for the keys in reject, and otherwise behaves
// like fakeAPI.
type rejectingAPI struct {
	*fakeAPI
	mu     sync.Mutex
	reject map[string]bool
}

func (a *rejectingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/invoices/")
	a.mu.Lock()
	bad := a.reject[key]
	a.mu.Unlock()
	if bad {
		http.Error(w, "amount must be positive", http.StatusBadRequest)
		return
	}
	a.fakeAPI.ServeHTTP(w, r)
}

// A record an HTTP API rejects (400) is dead-lettered for that target only,
// with its key and the API's answer; the other records and the other
// target arrive. Once the API accepts it, `oneway dlq retry` re-drives it
// and the API ends with every record.
func TestHTTPRejectionRetriedAfterFix(t *testing.T) {
	src := testenv.Connect(t, pgtest.NewDatabase(t))
	dst := testenv.Connect(t, pgtest.NewDatabase(t))
	ledger := pgtest.NewDatabase(t)
	src.Exec(t, testenv.InvoicesDDL)
	testenv.SeedInvoices(t, src, 1, 2000)
	api := &rejectingAPI{fakeAPI: &fakeAPI{bodies: map[string]map[string]any{}}, reject: map[string]bool{"1234": true}}
	srv := httptest.NewServer(api)
	defer srv.Close()
	cfg := testenv.Config(t, "", src.URL, dst.URL, fmt.Sprintf(`  - name: api
    kind: http
    url: "%s/invoices/{{.Key | path}}"
    ledger_url: %q
`, srv.URL, ledger))
	data := t.TempDir()

	r := testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 1 || !strings.Contains(r.Stderr, "dead-lettered") {
		t.Fatalf("oneway up: exit %d, want 1 naming dead letters\n%s", r.Code, r.Stderr)
	}
	if err := countIs(dst, 2000); err != nil {
		t.Fatalf("the PostgreSQL target was held back: %v", err)
	}
	if _, all := api.count("status", "open"); all != 1999 {
		t.Fatalf("API has %d records, want 1999", all)
	}
	list := mustDLQ(t, cfg, data, "list")
	var line string
	for _, l := range strings.Split(list, "\n") {
		if strings.Contains(l, " api ") && strings.Contains(l, " 1234 ") {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, "400") {
		t.Fatalf("dlq list does not show key 1234 of target api with the API's 400:\n%s", list)
	}

	api.mu.Lock()
	delete(api.reject, "1234")
	api.mu.Unlock()
	mustDLQ(t, cfg, data, "retry", "--all", "--target", "api")
	r = testenv.Run(t, syncTimeout, "oneway", upArgs(cfg, data, "--exit-when-synced")...)
	if r.Code != 0 {
		t.Fatalf("oneway up after the retry: exit %d\n%s", r.Code, r.Stderr)
	}
	if _, all := api.count("status", "open"); all != 2000 {
		t.Fatalf("API has %d records after the retry, want 2000", all)
	}
	api.fakeAPI.mu.Lock()
	b := api.bodies["1234"]
	api.fakeAPI.mu.Unlock()
	if b["customer"] != "customer 1234" {
		t.Fatalf("API record 1234 = %v", b)
	}
	if out := mustDLQ(t, cfg, data, "list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("dead letters left after the retry:\n%s", out)
	}
}
