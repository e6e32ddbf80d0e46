#!/bin/sh
# Runs once in the postgres container's first start (docker-entrypoint-initdb.d):
# the demo System of Record, the target, and the database of the stage store.
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" <<'SQL'
CREATE DATABASE oneway_demo_source;
CREATE DATABASE oneway_demo_target;
CREATE DATABASE oneway_stage;
SQL
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d oneway_demo_source -f /examples/invoices-source.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d oneway_demo_target -f /examples/invoices-target.sql
