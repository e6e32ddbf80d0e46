-- The System of Record of deploy/examples/invoices.yaml, with 50,000 rows.
CREATE TABLE public.invoices (
  id         bigint PRIMARY KEY,
  customer   text,
  amount     numeric(12,2),
  status     text,
  note       text,
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- The watermark reads in (updated_at, id) order: an index keeps polls cheap.
CREATE INDEX invoices_updated_at_id ON public.invoices (updated_at, id);

INSERT INTO public.invoices (id, customer, amount, status, note)
SELECT g, 'customer ' || (g % 997), round((g % 10000) / 7.0, 2),
       (ARRAY['open', 'paid', 'void'])[1 + g % 3],
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'invoice ' || g END
FROM generate_series(1, 50000) g;

-- Keep updated_at honest: every UPDATE moves it to the transaction's time.
CREATE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;
CREATE TRIGGER invoices_touch BEFORE UPDATE ON public.invoices
  FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
