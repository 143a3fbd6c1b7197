-- calendar-sync's echo key (issue 13; docs/decisions.md 51, "An echo marker
-- that proves itself"). Deviation from the seed, which has no such table.
--
-- Every transaction in which calendar-sync writes to interaction (the
-- calendar_synced_at stamp) starts with the transactional logical message
-- 'calendar_sync.echo' whose content is sha256(key || the transaction's
-- 32-bit xid, as 8 bytes big-endian). The stream recomputes it from the
-- Begin's xid with the key it read at start: no lookup of the transaction,
-- so nothing depends on whether the transaction is visible yet when its
-- commit is streamed, and nothing has to be pruned. Any role may emit the
-- message; only a role that can read this key can make it prove anything.
--
-- Readable only by its owner (the role that ran `calendar-sync migrate`) and
-- roles granted select on it explicitly, i.e. the role calendar-sync runs as.
-- A role that can read it (or is a superuser, or a member of the calendar-sync
-- role) can still hide a transaction from the calendar.
--
-- One row. The key is 32 random bytes from two gen_random_uuid() (core since
-- PostgreSQL 13, drawn from pg_strong_random): 244 random bits. Every consumer
-- of this database reads the same key, so two consumers never echo each other.
--
-- calendar_sync_echo (0002) is no longer written or read; it stays for one
-- release so that a task of the previous version still running during a
-- rolling deploy does not fail on it, and goes in a later migration.
create table if not exists calendar_sync_echo_key (
    id boolean primary key default true check (id),
    key bytea not null check (length(key) = 32),
    created_at timestamptz not null default now()
);
insert into calendar_sync_echo_key (key)
select decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
on conflict (id) do nothing;

-- Nobody but the owner: not PUBLIC, and not the roles that default privileges
-- (ALTER DEFAULT PRIVILEGES ... GRANT ... ON TABLES TO crm_app, common in CRMs)
-- granted this new table to.
revoke all on calendar_sync_echo_key from public;
do $$
declare
    grantee_name text;
begin
    for grantee_name in
        select distinct a.grantee::regrole::text
          from pg_class c, aclexplode(c.relacl) a
         where c.oid = 'calendar_sync_echo_key'::regclass
           and a.grantee <> 0 and a.grantee <> c.relowner
    loop
        execute format('revoke all on calendar_sync_echo_key from %s', grantee_name);
    end loop;
end
$$;
