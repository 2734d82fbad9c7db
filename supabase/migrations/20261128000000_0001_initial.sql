-- Generated from opsdash/migrations/versions/0001_initial.py by
-- `python -m opsdash.migrations.supabase`: edit the revision, not this file.

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE IF NOT EXISTS companies (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    service_company_id VARCHAR NOT NULL, 
    name VARCHAR NOT NULL, 
    sync_enabled BOOLEAN DEFAULT true NOT NULL, 
    portal_enabled BOOLEAN DEFAULT true NOT NULL, 
    feature_toggles JSONB DEFAULT '{}', 
    PRIMARY KEY (id)
);

ALTER TABLE companies ADD COLUMN IF NOT EXISTS toggle_overrides JSONB DEFAULT '{}';

ALTER TABLE companies ADD COLUMN IF NOT EXISTS timezone VARCHAR DEFAULT 'UTC' NOT NULL;

ALTER TABLE companies ADD COLUMN IF NOT EXISTS created_at TIMESTAMP WITH TIME ZONE DEFAULT now();

ALTER TABLE companies ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP WITH TIME ZONE DEFAULT now();

CREATE UNIQUE INDEX IF NOT EXISTS ix_companies_service_company_id ON companies (service_company_id);

CREATE TABLE IF NOT EXISTS background_jobs (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    job_type VARCHAR NOT NULL, 
    company_id UUID, 
    status VARCHAR DEFAULT 'pending' NOT NULL, 
    params JSONB DEFAULT '{}', 
    result JSONB, 
    error_message VARCHAR, 
    attempts INTEGER DEFAULT 0 NOT NULL, 
    max_attempts INTEGER DEFAULT 3 NOT NULL, 
    scheduled_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    started_at TIMESTAMP WITH TIME ZONE, 
    completed_at TIMESTAMP WITH TIME ZONE, 
    duration_ms INTEGER, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL, 
    PRIMARY KEY (id), 
    FOREIGN KEY(company_id) REFERENCES companies (id) ON DELETE CASCADE
);

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS locked_by VARCHAR;

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS dedup_key VARCHAR;

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS errors JSONB DEFAULT '[]';

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS rescue_count INTEGER DEFAULT 0 NOT NULL;

ALTER TABLE background_jobs ALTER COLUMN id SET DEFAULT gen_random_uuid();

ALTER TABLE background_jobs ALTER COLUMN params SET DEFAULT '{}'::jsonb;

ALTER TABLE background_jobs ALTER COLUMN errors SET DEFAULT '[]'::jsonb;

CREATE UNIQUE INDEX IF NOT EXISTS background_jobs_dedup_active ON background_jobs (dedup_key) WHERE status IN ('pending', 'running');

CREATE INDEX IF NOT EXISTS background_jobs_due ON background_jobs (scheduled_at) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS background_jobs_company_due ON background_jobs (company_id, scheduled_at) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS background_jobs_lease ON background_jobs (lease_expires_at) WHERE status = 'running';

CREATE INDEX IF NOT EXISTS background_jobs_created ON background_jobs (created_at);

CREATE INDEX IF NOT EXISTS background_jobs_status_created ON background_jobs (status, created_at);

CREATE INDEX IF NOT EXISTS background_jobs_company_created ON background_jobs (company_id, created_at);

CREATE TABLE IF NOT EXISTS job_stats (
    hour TIMESTAMP WITH TIME ZONE NOT NULL, 
    job_type VARCHAR NOT NULL, 
    status VARCHAR NOT NULL, 
    count INTEGER DEFAULT 0 NOT NULL, 
    total_duration_ms INTEGER DEFAULT 0 NOT NULL, 
    max_duration_ms INTEGER DEFAULT 0 NOT NULL, 
    PRIMARY KEY (hour, job_type, status)
);

CREATE TABLE IF NOT EXISTS schedule_data (
    id UUID DEFAULT gen_random_uuid() NOT NULL, 
    company_id UUID NOT NULL, 
    date DATE NOT NULL, 
    storage_path VARCHAR NOT NULL, 
    file_size_kb FLOAT NOT NULL, 
    checksum VARCHAR NOT NULL, 
    job_count INTEGER DEFAULT 0 NOT NULL, 
    employee_count INTEGER DEFAULT 0 NOT NULL, 
    team_count INTEGER DEFAULT 0 NOT NULL, 
    status VARCHAR DEFAULT 'ready' NOT NULL, 
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now(), 
    PRIMARY KEY (id), 
    CONSTRAINT schedule_data_company_date UNIQUE (company_id, date), 
    FOREIGN KEY(company_id) REFERENCES companies (id) ON DELETE CASCADE
);

ALTER TABLE schedule_data ALTER COLUMN id SET DEFAULT gen_random_uuid();

CREATE TABLE IF NOT EXISTS user_profiles (
    id UUID NOT NULL, 
    company_id UUID, 
    role VARCHAR NOT NULL, 
    employee_information_id VARCHAR, 
    PRIMARY KEY (id), 
    FOREIGN KEY(company_id) REFERENCES companies (id) ON DELETE CASCADE
);

ALTER TABLE user_profiles ADD COLUMN IF NOT EXISTS email VARCHAR;

ALTER TABLE user_profiles ADD COLUMN IF NOT EXISTS full_name VARCHAR;

ALTER TABLE user_profiles ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP WITH TIME ZONE DEFAULT now();

CREATE INDEX IF NOT EXISTS ix_user_profiles_company_id ON user_profiles (company_id);

CREATE INDEX IF NOT EXISTS ix_user_profiles_email ON user_profiles (email);

do $$
begin
    if to_regnamespace('auth') is not null then
        alter table companies enable row level security;
        alter table background_jobs enable row level security;
        alter table job_stats enable row level security;
        alter table schedule_data enable row level security;
        alter table user_profiles enable row level security;
        if to_regprocedure('auth.uid()') is not null
           and exists (select 1 from pg_roles where rolname = 'authenticated')
           and not exists (
               select 1 from pg_policies
               where schemaname = current_schema()
                 and tablename = 'user_profiles' and policyname = 'own profile'
           ) then
            execute 'create policy "own profile" on user_profiles for select '
                    'to authenticated using (id = auth.uid())';
        end if;
    end if;
end
$$;

do $$
begin
    if to_regclass('storage.buckets') is not null then
        insert into storage.buckets (id, name, public)
        values ('schedule-data', 'schedule-data', false)
        on conflict (id) do nothing;
    end if;
end
$$;

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

