// Package fakesaas is a small fake SaaS HTTP API (the MailChimp or
// QuickBooks of the seed): an "invoices" collection with pagination, a
// modified_since filter, create/update/delete endpoints, bearer
// authentication and injected faults (429 with Retry-After, 503). Tests
// run it with httptest; `go run ./integration/cmd/fakesaas` serves it.
//
// Endpoints (every one needs "Authorization: Bearer <token>"):
//
//	GET    /invoices?limit=N&page_token=T           full listing, in no useful order (by a hash of the id)
//	GET    /invoices?modified_since=RFC3339&limit=N&page_token=T
//	                                                 invoices with modified_at >= modified_since, by (modified_at, id)
//	GET    /invoices/{id}
//	POST   /invoices                                 create (id optional); 201 with the invoice
//	PUT    /invoices/{id}                            update customer, amount, status; 200
//	DELETE /invoices/{id}                            204
//	POST   /_faults?status=429&count=N&retry_after=1 the next N listings answer status
//
// A page is {"data": [...], "next_page_token": "..." | null}. Pagination
// is by a cursor (the last invoice's sort position), so records changed
// while a listing pages through are neither listed twice nor, unless they
// move behind the cursor, missed.
package fakesaas

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Invoice is one record of the collection.
type Invoice struct {
	ID         int64     `json:"id"`
	Customer   string    `json:"customer"`
	Amount     string    `json:"amount"` // a decimal, as text
	Status     string    `json:"status"`
	ModifiedAt time.Time `json:"modified_at"`
}

// Server is the fake API; it is an http.Handler, safe for concurrent use.
type Server struct {
	token string
	// Coarse stamps modified_at to the whole second, as many APIs do, so
	// that several changes share one timestamp.
	coarse bool

	mu       sync.Mutex
	invoices map[int64]Invoice
	nextID   int64
	last     time.Time
	faults   []fault
	served   map[int]int
	lists    int
}

type fault struct {
	status     int
	retryAfter time.Duration
}

// New returns a server that accepts the bearer token; coarse stamps
// modified_at to whole seconds.
func New(token string, coarse bool) *Server {
	return &Server{token: token, coarse: coarse, invoices: map[int64]Invoice{}, nextID: 1, served: map[int]int{}}
}

// stamp returns the modification time of a change: now (to the second
// when coarse), never before the previous stamp.
func (s *Server) stamp() time.Time {
	t := time.Now().UTC()
	if s.coarse {
		t = t.Truncate(time.Second)
	} else {
		t = t.Truncate(time.Microsecond)
	}
	if t.Before(s.last) {
		t = s.last
	}
	s.last = t
	return t
}

// Create adds an invoice (ID 0: the next free id) and returns it.
func (s *Server) Create(inv Invoice) Invoice {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.create(inv)
}

func (s *Server) create(inv Invoice) Invoice {
	if inv.ID == 0 {
		inv.ID = s.nextID
	}
	s.nextID = max(s.nextID, inv.ID+1)
	inv.ModifiedAt = s.stamp()
	s.invoices[inv.ID] = inv
	return inv
}

// Update changes an invoice; false when it does not exist.
func (s *Server) Update(id int64, change func(*Invoice)) (Invoice, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inv, ok := s.invoices[id]
	if !ok {
		return Invoice{}, false
	}
	change(&inv)
	inv.ID = id
	inv.ModifiedAt = s.stamp()
	s.invoices[id] = inv
	return inv, true
}

// Delete removes an invoice; false when it did not exist.
func (s *Server) Delete(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.invoices[id]
	delete(s.invoices, id)
	return ok
}

// IDs returns the ids of the invoices, in order.
func (s *Server) IDs() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int64, 0, len(s.invoices))
	for id := range s.invoices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// InjectFaults makes the next count listings (GET /invoices) answer
// status, with a Retry-After header of retryAfter when it is > 0.
func (s *Server) InjectFaults(status, count int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range count {
		s.faults = append(s.faults, fault{status: status, retryAfter: retryAfter})
	}
}

// FaultsServed returns how many injected faults of status were answered.
func (s *Server) FaultsServed(status int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served[status]
}

// Listings returns how many listing pages were served.
func (s *Server) Listings() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lists
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+s.token {
		writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
		return
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case path == "/_faults" && r.Method == http.MethodPost:
		q := r.URL.Query()
		status, _ := strconv.Atoi(q.Get("status"))
		count, _ := strconv.Atoi(q.Get("count"))
		ra, _ := strconv.ParseFloat(q.Get("retry_after"), 64)
		if status < 400 || count < 1 {
			writeError(w, http.StatusBadRequest, "status (>= 400) and count (>= 1) are required")
			return
		}
		s.InjectFaults(status, count, time.Duration(ra*float64(time.Second)))
		w.WriteHeader(http.StatusNoContent)
	case path == "/invoices" && r.Method == http.MethodGet:
		s.list(w, r)
	case path == "/invoices" && r.Method == http.MethodPost:
		var inv Invoice
		if err := json.NewDecoder(r.Body).Decode(&inv); err != nil {
			writeError(w, http.StatusBadRequest, "body: "+err.Error())
			return
		}
		if !validAmount(inv.Amount) {
			writeError(w, http.StatusBadRequest, "amount must be a decimal")
			return
		}
		s.mu.Lock()
		if _, taken := s.invoices[inv.ID]; taken {
			s.mu.Unlock()
			writeError(w, http.StatusConflict, fmt.Sprintf("invoice %d exists", inv.ID))
			return
		}
		inv = s.create(inv)
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, inv)
	case strings.HasPrefix(path, "/invoices/"):
		id, err := strconv.ParseInt(strings.TrimPrefix(path, "/invoices/"), 10, 64)
		if err != nil {
			writeError(w, http.StatusNotFound, "no such invoice")
			return
		}
		s.one(w, r, id)
	default:
		writeError(w, http.StatusNotFound, "no such endpoint")
	}
}

func (s *Server) one(w http.ResponseWriter, r *http.Request, id int64) {
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		inv, ok := s.invoices[id]
		s.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, "no such invoice")
			return
		}
		writeJSON(w, http.StatusOK, inv)
	case http.MethodPut:
		var in Invoice
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, "body: "+err.Error())
			return
		}
		if !validAmount(in.Amount) {
			writeError(w, http.StatusBadRequest, "amount must be a decimal")
			return
		}
		inv, ok := s.Update(id, func(inv *Invoice) { inv.Customer, inv.Amount, inv.Status = in.Customer, in.Amount, in.Status })
		if !ok {
			writeError(w, http.StatusNotFound, "no such invoice")
			return
		}
		writeJSON(w, http.StatusOK, inv)
	case http.MethodDelete:
		if !s.Delete(id) {
			writeError(w, http.StatusNotFound, "no such invoice")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	}
}

// sortPos is an invoice's place in a listing: the full listing sorts by
// a hash of the id (no useful order), the modified_since one by
// modified_at; then by id.
type sortPos struct {
	a  int64
	id int64
}

func (p sortPos) less(q sortPos) bool { return p.a < q.a || p.a == q.a && p.id < q.id }

func hashID(id int64) int64 {
	h := fnv.New64a()
	fmt.Fprint(h, id)
	return int64(h.Sum64() >> 1)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "limit must be a positive integer")
			return
		}
		limit = min(n, 1000)
	}
	var since time.Time
	bySince := q.Has("modified_since")
	if bySince {
		var err error
		if since, err = time.Parse(time.RFC3339Nano, q.Get("modified_since")); err != nil {
			writeError(w, http.StatusBadRequest, "modified_since must be an RFC 3339 time")
			return
		}
	}
	var after *sortPos
	if tok := q.Get("page_token"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		var p sortPos
		if err == nil {
			_, err = fmt.Sscanf(string(b), "%d:%d", &p.a, &p.id)
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad page_token")
			return
		}
		after = &p
	}

	s.mu.Lock()
	if len(s.faults) > 0 {
		f := s.faults[0]
		s.faults = s.faults[1:]
		s.served[f.status]++
		s.mu.Unlock()
		if f.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.retryAfter.Seconds()))))
		}
		writeError(w, f.status, "injected fault")
		return
	}
	s.lists++
	type item struct {
		pos sortPos
		inv Invoice
	}
	var items []item
	for _, inv := range s.invoices {
		p := sortPos{a: hashID(inv.ID), id: inv.ID}
		if bySince {
			if inv.ModifiedAt.Before(since) {
				continue
			}
			p.a = inv.ModifiedAt.UnixMicro()
		}
		if after != nil && !after.less(p) {
			continue
		}
		items = append(items, item{p, inv})
	}
	s.mu.Unlock()
	slices.SortFunc(items, func(x, y item) int {
		switch {
		case x.pos.less(y.pos):
			return -1
		case y.pos.less(x.pos):
			return 1
		}
		return 0
	})
	page := struct {
		Data []Invoice `json:"data"`
		Next *string   `json:"next_page_token"`
	}{Data: []Invoice{}}
	for i, it := range items {
		if i == limit {
			last := items[i-1].pos
			tok := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d:%d", last.a, last.id))
			page.Next = &tok
			break
		}
		page.Data = append(page.Data, it.inv)
	}
	writeJSON(w, http.StatusOK, page)
}

func validAmount(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil && !strings.ContainsAny(s, "eExXpPinfINFaA")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
