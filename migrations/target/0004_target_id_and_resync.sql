-- This target's identity and its pending start-overs (issue 14; docs/
-- decisions.md 53). Deviation from the seed, which has neither.
--
-- calendar_sync_target_id: one row, a random id made at the first `migrate`,
-- by which the source's calendar_sync_slot_owner knows which deployment owns
-- a slot.
create table if not exists calendar_sync_target_id (
    id         boolean primary key default true check (id),
    target_id  uuid not null default gen_random_uuid(),
    created_at timestamptz not null default now()
);
insert into calendar_sync_target_id default values on conflict (id) do nothing;

-- calendar_sync_resync: a `run --resync` in progress. Written in the same
-- transaction that forgets the slot's progress; deleted once the new snapshot
-- committed and the events of interactions deleted while the slot was gone
-- were removed. Every start completes a pending one, also after a crash in the
-- middle of either step.
create table if not exists calendar_sync_resync (
    slot_name    text primary key,
    requested_at timestamptz not null default now()
);
