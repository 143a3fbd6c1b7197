-- calendar-sync target schema: the seed's tables (calendar-sync-design.md,
-- "Phase 2") plus what CDC needs. Applied to TARGET_DATABASE_URL (or to
-- DATABASE_URL when there is no separate target). Append-only: never edit a
-- migration that has shipped; add a new file.
--
-- Deviation (all tables): ids default to gen_random_uuid(), built into
-- PostgreSQL 13+, instead of uuid_generate_v4(), so a database without the
-- uuid-ossp extension works.

create table if not exists calendar_events (
    event_id       uuid primary key default gen_random_uuid(),
    title          varchar(255) not null,
    description    text,
    event_date     timestamptz not null,
    start_time     time,
    end_time       time,
    all_day        boolean default false,
    event_type     varchar(50) not null,
    event_status   varchar(20) default 'scheduled',
    related_table  varchar(50),
    related_id     uuid,
    location       varchar(255),
    participants   text[],
    created_by     uuid not null,
    updated_by     uuid,
    created_at     timestamptz default now(),
    updated_at     timestamptz default now(),
    synced_from    varchar(50),
    last_synced_at timestamptz,
    -- Deviation: the customer and contact the participants were derived from,
    -- so that a rename of either refreshes exactly the events that show it
    -- (contract §3), also when the target is a separate database.
    customer_id    uuid,
    contact_id     uuid,
    -- Deviation: commit LSN of the last source transaction applied to this row
    -- (contract §4: "to refuse regressions"); a write from an older LSN is refused.
    source_lsn     pg_lsn,
    unique (related_table, related_id)
);

create index if not exists idx_calendar_events_date on calendar_events (event_date);
create index if not exists idx_calendar_events_related on calendar_events (related_table, related_id);
create index if not exists idx_calendar_events_created_by on calendar_events (created_by);
create index if not exists idx_calendar_events_status on calendar_events (event_status);
-- Deviation: find the events of a renamed customer / contact.
create index if not exists idx_calendar_events_customer on calendar_events (customer_id) where customer_id is not null;
create index if not exists idx_calendar_events_contact on calendar_events (contact_id) where contact_id is not null;

-- The seed's foreign keys to users(user_id) exist only where a users table
-- does (a separate target database usually has none; contract §7).
do $$
begin
    if to_regclass('users') is not null then
        if not exists (select 1 from pg_constraint where conname = 'calendar_events_created_by_fkey') then
            alter table calendar_events
                add constraint calendar_events_created_by_fkey foreign key (created_by) references users (user_id);
        end if;
        if not exists (select 1 from pg_constraint where conname = 'calendar_events_updated_by_fkey') then
            alter table calendar_events
                add constraint calendar_events_updated_by_fkey foreign key (updated_by) references users (user_id);
        end if;
    end if;
end
$$;

create table if not exists calendar_sync_log (
    log_id         uuid primary key default gen_random_uuid(),
    interaction_id uuid not null,
    event_id       uuid,
    action         varchar(20) not null, -- 'create', 'update', 'delete', 'cancel'
    status         varchar(20) not null, -- 'success', 'failed'
    error_message  text,
    created_at     timestamptz default now(),
    -- The interaction's updated_by, else its created_by (the user whose change
    -- caused the sync); for a delete, the event's.
    created_by     uuid not null,
    -- Deviation: the source commit LSN that caused this row (audit, replay checks).
    source_lsn     pg_lsn
);
create index if not exists idx_calendar_sync_log_interaction on calendar_sync_log (interaction_id);

create table if not exists calendar_sync_failures (
    failure_id     uuid primary key default gen_random_uuid(),
    -- Deviation: no foreign key to interaction (contract §4). A failed hard
    -- delete must stay recordable after its interaction is gone, and a
    -- separate target database has no interaction table.
    interaction_id uuid not null,
    action         varchar(20) not null,
    error_message  text not null,
    error_stack    text,
    retry_count    integer default 0,
    last_retry_at  timestamptz,
    next_retry_at  timestamptz,
    resolved       boolean default false,
    created_at     timestamptz default now()
);
-- Deviation: one open failure per interaction (contract §7).
create unique index if not exists uq_calendar_sync_failures_open
    on calendar_sync_failures (interaction_id) where not resolved;
create index if not exists idx_calendar_sync_failures_next_retry
    on calendar_sync_failures (next_retry_at) where not resolved;

-- Deviation (contract §4): one row per replication slot. lsn is the end LSN
-- of the last source transaction whose effects are committed here, written in
-- the same transaction as those effects; it never decreases. A slot with no
-- row here has not finished its initial snapshot.
create table if not exists calendar_sync_progress (
    slot_name      text primary key,
    lsn            pg_lsn not null,
    commit_time    timestamptz,
    snapshot_lsn   pg_lsn not null,
    snapshot_at    timestamptz not null,
    updated_at     timestamptz not null default now()
);
