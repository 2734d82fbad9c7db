-- Generated from opsdash/migrations/versions/0003_freshness_ledger_alerts.py by
-- `python -m opsdash.migrations.supabase`: edit the revision, not this file.

-- Running upgrade 0002 -> 0003

ALTER TABLE schedule_data ADD COLUMN IF NOT EXISTS synced_at TIMESTAMP WITH TIME ZONE;

CREATE TABLE IF NOT EXISTS sync_runs (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    trigger VARCHAR DEFAULT 'scheduled' NOT NULL, 
    scope VARCHAR DEFAULT 'all' NOT NULL, 
    queued_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    finished_at TIMESTAMP WITH TIME ZONE, 
    planned INTEGER DEFAULT 0 NOT NULL, 
    queued INTEGER DEFAULT 0 NOT NULL, 
    companies INTEGER DEFAULT 0 NOT NULL, 
    days_done INTEGER DEFAULT 0 NOT NULL, 
    days_failed INTEGER DEFAULT 0 NOT NULL, 
    days_unchanged INTEGER DEFAULT 0 NOT NULL, 
    upstream_calls INTEGER DEFAULT 0 NOT NULL, 
    bytes_written INTEGER DEFAULT 0 NOT NULL, 
    PRIMARY KEY (id)
);

CREATE INDEX IF NOT EXISTS ix_sync_runs_queued_at ON sync_runs (queued_at);

CREATE TABLE IF NOT EXISTS alerts (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    key VARCHAR NOT NULL, 
    kind VARCHAR NOT NULL, 
    company_id UUID, 
    subject VARCHAR NOT NULL, 
    detail JSONB DEFAULT '{}', 
    opened_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    resolved_at TIMESTAMP WITH TIME ZONE, 
    last_notified_at TIMESTAMP WITH TIME ZONE, 
    notifications INTEGER DEFAULT 0 NOT NULL, 
    PRIMARY KEY (id), 
    FOREIGN KEY(company_id) REFERENCES companies (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_key ON alerts (key) WHERE resolved_at IS NULL;

CREATE INDEX IF NOT EXISTS alerts_opened ON alerts (opened_at);

CREATE TABLE IF NOT EXISTS alert_deliveries (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    alert_id UUID, 
    event VARCHAR NOT NULL, 
    channel VARCHAR NOT NULL, 
    subject VARCHAR NOT NULL, 
    body VARCHAR NOT NULL, 
    payload JSONB DEFAULT '{}', 
    status VARCHAR DEFAULT 'pending' NOT NULL, 
    attempts INTEGER DEFAULT 0 NOT NULL, 
    max_attempts INTEGER DEFAULT 8 NOT NULL, 
    next_attempt_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    sent_at TIMESTAMP WITH TIME ZONE, 
    error VARCHAR, 
    locked_by VARCHAR, 
    lease_expires_at TIMESTAMP WITH TIME ZONE, 
    PRIMARY KEY (id), 
    FOREIGN KEY(alert_id) REFERENCES alerts (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS alert_deliveries_created ON alert_deliveries (created_at);

do $$
begin
    if to_regnamespace('auth') is not null then
        alter table sync_runs enable row level security;
        alter table alerts enable row level security;
        alter table alert_deliveries enable row level security;
    end if;
end
$$;

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

