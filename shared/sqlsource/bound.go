package sqlsource

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"time"

	"github.com/oneway-sync/oneway/shared/source"
)

// boundLayout is the form of a time bound: whole seconds, as the stored
// values compare with it (see the package comment).
const boundLayout = "2006-01-02 15:04:05"

// SafeBound returns the commit-safe time bound (see the package comment).
func (s *Source) SafeBound(ctx context.Context, lookbackSeconds float64) (string, error) {
	if s.d.name == KindSQLite {
		var now string
		err := s.underWriteLock(ctx, func(ctx context.Context, q *sql.Conn) error {
			return q.QueryRowContext(ctx, "SELECT strftime('%Y-%m-%d %H:%M:%S', 'now')").Scan(&now)
		})
		if err != nil {
			return "", err
		}
		t, ok := parseTime(now)
		if !ok {
			return "", fmt.Errorf("compute watermark bound on %s: unexpected time %q", s.what, now)
		}
		return t.Add(-seconds(lookbackSeconds)).Format(boundLayout), nil
	}
	now, oldest, err := s.mysqlClock(ctx)
	if err != nil {
		return "", classify(fmt.Errorf("compute watermark bound on %s: %w", s.what, err))
	}
	t := now.Add(-seconds(math.Max(lookbackSeconds, 1)))
	if !oldest.IsZero() && oldest.Before(t) {
		t = oldest
	}
	return t.UTC().Truncate(time.Second).Format(boundLayout), nil
}

// mysqlClock returns the server's time and the start of its oldest open
// InnoDB transaction (zero when none). innodb_trx prints trx_started in
// the server's system time zone, whatever the session's, so both are read
// as epochs on a session set to the system zone for the query.
func (s *Source) mysqlClock(ctx context.Context) (now, oldest time.Time, err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return now, oldest, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET time_zone = 'SYSTEM'"); err != nil {
		return now, oldest, err
	}
	defer func() {
		if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "SET time_zone = '+00:00'"); rerr != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn }) // do not reuse it with the wrong zone
			if err == nil {
				err = rerr
			}
		}
	}()
	var n, o sql.NullFloat64
	err = conn.QueryRowContext(ctx, `SELECT UNIX_TIMESTAMP(NOW(6)),
  (SELECT UNIX_TIMESTAMP(MIN(trx_started)) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id <> CONNECTION_ID())`).Scan(&n, &o)
	if err != nil {
		return now, oldest, err
	}
	now = time.UnixMicro(int64(n.Float64 * 1e6)).UTC()
	if o.Valid {
		oldest = time.UnixMicro(int64(o.Float64 * 1e6)).UTC()
	}
	return now, oldest, nil
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// Bound returns the commit-safe bound of the watermark column: SafeBound
// for times; for a SQLite integer column, max(column) taken under the
// write lock, inclusive.
func (s *Source) Bound(ctx context.Context, lookbackSeconds float64) (source.Bound, error) {
	if !s.wmNum {
		b, err := s.SafeBound(ctx, lookbackSeconds)
		return source.Bound{Value: b}, err
	}
	var maxv any
	err := s.underWriteLock(ctx, func(ctx context.Context, q *sql.Conn) error {
		return q.QueryRowContext(ctx, fmt.Sprintf("SELECT max(%s) FROM %s", s.d.quote(s.cols[s.wmIdx].Name), s.from)).Scan(&maxv)
	})
	if err != nil {
		return source.Bound{}, err
	}
	if maxv == nil {
		// An empty table: every row to come is above any number, and
		// none is smaller than the smallest int64.
		return source.Bound{Value: fmt.Sprint(math.MinInt64), Inclusive: true}, nil
	}
	return source.Bound{Value: string(text(kInt, maxv)), Inclusive: true}, nil
}

// underWriteLock runs f on a connection holding SQLite's write lock
// (BEGIN IMMEDIATE, waiting up to the busy timeout for a writer to end),
// then releases it. While it is held no write transaction is open.
func (s *Source) underWriteLock(ctx context.Context, f func(context.Context, *sql.Conn) error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return classify(fmt.Errorf("compute watermark bound on %s: %w", s.what, err))
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return classify(fmt.Errorf("compute watermark bound on %s: take the write lock: %w", s.what, err))
	}
	err = f(ctx, conn)
	if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return classify(fmt.Errorf("compute watermark bound on %s: %w", s.what, err))
	}
	return nil
}
