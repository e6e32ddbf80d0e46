-- The target of deploy/examples/invoices.yaml: the owned columns, plus a
-- column only the target has (crm_notes) and an orphan row the source never
-- had. oneway writes neither.
CREATE TABLE public.invoices (
  id         bigint PRIMARY KEY,
  customer   text,
  amount     numeric(12,2),
  status     text,
  note       text,
  updated_at timestamptz,
  crm_notes  text
);
INSERT INTO public.invoices (id, customer, crm_notes) VALUES
  (1, 'placeholder', 'called the customer on Monday'),
  (900001, 'hand-made orphan', 'created in the CRM');
