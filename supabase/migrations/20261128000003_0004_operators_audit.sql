-- Generated from opsdash/migrations/versions/0004_operators_audit.py by
-- `python -m opsdash.migrations.supabase`: edit the revision, not this file.

-- Running upgrade 0003 -> 0004

CREATE TABLE IF NOT EXISTS operators (
    name VARCHAR NOT NULL, 
    password_hash VARCHAR NOT NULL, 
    read_only BOOLEAN DEFAULT false NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    disabled_at TIMESTAMP WITH TIME ZONE, 
    last_login_at TIMESTAMP WITH TIME ZONE, 
    PRIMARY KEY (name)
);

CREATE TABLE IF NOT EXISTS operator_audit (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    operator VARCHAR NOT NULL, 
    console VARCHAR NOT NULL, 
    action VARCHAR NOT NULL, 
    target JSONB DEFAULT '{}', 
    result VARCHAR NOT NULL, 
    detail VARCHAR, 
    PRIMARY KEY (id)
);

CREATE INDEX IF NOT EXISTS operator_audit_at ON operator_audit (at);

do $$
begin
    if to_regnamespace('auth') is not null then
        alter table operators enable row level security;
        alter table operator_audit enable row level security;
    end if;
end
$$;

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

