-- opsdash schema for a Supabase project: tables, indexes, row level security and the
-- private storage bucket. Safe to apply on a project that already has the original
-- tables: every statement is idempotent and only adds what is missing.

create table if not exists companies (
    id uuid primary key default gen_random_uuid(),
    service_company_id varchar not null,
    name varchar not null,
    sync_enabled boolean not null default true,
    portal_enabled boolean not null default true,
    feature_toggles jsonb default '{}'::jsonb,
    toggle_overrides jsonb default '{}'::jsonb,
    timezone varchar not null default 'UTC',
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
alter table companies add column if not exists toggle_overrides jsonb default '{}'::jsonb;
alter table companies add column if not exists timezone varchar not null default 'UTC';
alter table companies add column if not exists created_at timestamptz default now();
alter table companies add column if not exists updated_at timestamptz default now();
create unique index if not exists ix_companies_service_company_id on companies (service_company_id);

create table if not exists background_jobs (
    id uuid primary key default gen_random_uuid(),
    job_type varchar not null,
    company_id uuid references companies (id) on delete cascade,
    status varchar not null default 'pending',
    params jsonb default '{}'::jsonb,
    result jsonb,
    error_message varchar,
    attempts integer not null default 0,
    max_attempts integer not null default 3,
    scheduled_at timestamptz not null default now(),
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms integer,
    created_at timestamptz not null default now(),
    locked_by varchar,
    lease_expires_at timestamptz,
    dedup_key varchar,
    errors jsonb default '[]'::jsonb,
    rescue_count integer not null default 0
);
alter table background_jobs add column if not exists locked_by varchar;
alter table background_jobs add column if not exists lease_expires_at timestamptz;
alter table background_jobs add column if not exists dedup_key varchar;
alter table background_jobs add column if not exists errors jsonb default '[]'::jsonb;
alter table background_jobs add column if not exists rescue_count integer not null default 0;
create unique index if not exists background_jobs_dedup_active on background_jobs (dedup_key)
    where status in ('pending', 'running');
create index if not exists background_jobs_due on background_jobs (scheduled_at)
    where status = 'pending';
create index if not exists background_jobs_company_due on background_jobs (company_id, scheduled_at)
    where status = 'pending';
create index if not exists background_jobs_lease on background_jobs (lease_expires_at)
    where status = 'running';
create index if not exists background_jobs_created on background_jobs (created_at);
create index if not exists background_jobs_status_created on background_jobs (status, created_at);
create index if not exists background_jobs_company_created on background_jobs (company_id, created_at);

create table if not exists job_stats (
    hour timestamptz not null,
    job_type varchar not null,
    status varchar not null,
    count integer not null default 0,
    total_duration_ms integer not null default 0,
    max_duration_ms integer not null default 0,
    primary key (hour, job_type, status)
);

create table if not exists schedule_data (
    id uuid primary key default gen_random_uuid(),
    company_id uuid not null references companies (id) on delete cascade,
    date date not null,
    storage_path varchar not null,
    file_size_kb double precision not null,
    checksum varchar not null,
    job_count integer not null default 0,
    employee_count integer not null default 0,
    team_count integer not null default 0,
    status varchar not null default 'ready',
    updated_at timestamptz default now(),
    constraint schedule_data_company_date unique (company_id, date)
);

create table if not exists user_profiles (
    id uuid primary key,
    company_id uuid references companies (id) on delete cascade,
    role varchar not null,
    employee_information_id varchar,
    email varchar,
    full_name varchar,
    updated_at timestamptz default now(),
    maidcentral_user_id uuid
);
alter table user_profiles add column if not exists email varchar;
alter table user_profiles add column if not exists full_name varchar;
alter table user_profiles add column if not exists updated_at timestamptz default now();
-- The upstream UserId; the profile id is the Supabase Auth user's id. Profiles made before
-- this column existed were keyed by the upstream id, hence the backfill.
do $$
begin
    if not exists (select 1 from information_schema.columns where table_schema = current_schema()
                   and table_name = 'user_profiles' and column_name = 'maidcentral_user_id') then
        alter table user_profiles add column maidcentral_user_id uuid;
        update user_profiles set maidcentral_user_id = id;
    end if;
end
$$;
create index if not exists ix_user_profiles_company_id on user_profiles (company_id);
create index if not exists ix_user_profiles_email on user_profiles (email);
create unique index if not exists user_profiles_maidcentral_user_id
    on user_profiles (maidcentral_user_id);

-- Row level security: opsdash connects as the service role (which bypasses RLS); a
-- signed-in portal user may read only their own profile. Schedules are served by
-- the read API, never straight from the tables.
do $$
begin
    -- Roles are cluster-wide but auth.uid() lives in this database: a cluster that has
    -- the role without Supabase's auth schema (another project, a test) is no Supabase.
    if exists (select 1 from pg_roles where rolname = 'authenticated')
       and to_regprocedure('auth.uid()') is not null then
        execute 'alter table companies enable row level security';
        execute 'alter table background_jobs enable row level security';
        execute 'alter table job_stats enable row level security';
        execute 'alter table schedule_data enable row level security';
        execute 'alter table user_profiles enable row level security';
        if not exists (
            select 1 from pg_policies where schemaname = current_schema()
              and tablename = 'user_profiles' and policyname = 'own profile'
        ) then
            execute 'create policy "own profile" on user_profiles for select to authenticated '
                    'using (id = auth.uid())';
        end if;
    end if;
end
$$;

-- The private bucket that holds schedule-data/{service_company_id}/{date}/schedule.json.
do $$
begin
    if exists (select 1 from information_schema.tables
               where table_schema = 'storage' and table_name = 'buckets') then
        insert into storage.buckets (id, name, public)
        values ('schedule-data', 'schedule-data', false)
        on conflict (id) do nothing;
    end if;
end
$$;
