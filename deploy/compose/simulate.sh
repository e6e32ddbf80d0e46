#!/bin/sh
# The demo seeder's simulator: keeps changing the System of Record (updates and
# inserts) so the stack always has something to sync.
set -eu
: "${SIMULATE_INTERVAL:=2}"
while :; do
  psql -v ON_ERROR_STOP=1 -q <<'SQL'
UPDATE public.invoices SET status = (ARRAY['open','paid','void'])[1 + (random() * 2)::int]
 WHERE id IN (SELECT 1 + (random() * 49999)::bigint FROM generate_series(1, 50));
INSERT INTO public.invoices (id, customer, amount, status, note)
SELECT m + g, 'customer ' || g, round((random() * 1000)::numeric, 2), 'open', 'simulated'
  FROM (SELECT COALESCE(max(id), 0) AS m FROM public.invoices) s, generate_series(1, 10) g;
SQL
  sleep "$SIMULATE_INTERVAL"
done
