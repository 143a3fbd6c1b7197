-- Which deployment owns each replication slot (issue 14; docs/decisions.md
-- 53, "A slot is dropped, resumed or taken over only by its owner").
-- Deviation from the seed, which has no such table.
--
-- A slot lives in the source; a deployment is its target (where its events
-- and progress are). Two deployments that share a CRM and, by mistake, a slot
-- name (staging pointed at production, a moved target, a typo in
-- TARGET_DATABASE_URL) would otherwise drop or resume each other's slot and
-- silently miss what was written in between. `run` claims the slot here,
-- under the slot's advisory lock, before it creates it; it drops, resumes or
-- recreates only a slot claimed by its own target (calendar_sync_target_id in
-- the target). A claim outlives a crash in the middle of the first snapshot,
-- so that slot is still recognized as ours and taken again.
--
-- target_id: calendar_sync_target_id.target_id of the owner's target.
-- target: the owner's target as `database@host:port`, for people.
-- consistent_point: of the slot the owner created (NULL until its snapshot
--   committed, or for a slot adopted from before this table existed).
create table if not exists calendar_sync_slot_owner (
    slot_name        text primary key,
    target_id        uuid not null,
    target           text not null,
    consistent_point pg_lsn,
    claimed_at       timestamptz not null default now()
);

-- Readable and writable by the owner of the table (the role that ran
-- `migrate`) and roles granted explicitly: the role calendar-sync runs as
-- needs select, insert, update on it.
revoke all on calendar_sync_slot_owner from public;
do $$
declare
    grantee_name text;
begin
    for grantee_name in
        select distinct a.grantee::regrole::text
          from pg_class c, aclexplode(c.relacl) a
         where c.oid = 'calendar_sync_slot_owner'::regclass
           and a.grantee <> 0 and a.grantee <> c.relowner
    loop
        execute format('revoke all on calendar_sync_slot_owner from %s', grantee_name);
    end loop;
end
$$;
