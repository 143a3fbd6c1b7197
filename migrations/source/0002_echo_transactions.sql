-- calendar-sync's own transactions (issue 9; docs/decisions.md, "Echo marker,
-- verified"). Deviation from the seed, which has no such table.
--
-- Every transaction in which calendar-sync writes to interaction emits the
-- transactional logical message 'calendar_sync.echo' AND inserts its own
-- transaction id here, in one statement. The stream ignores a transaction only
-- if both hold. Any role may call pg_logical_emit_message, so the message alone
-- proves nothing; this table is writable only by its owner (the role that ran
-- `calendar-sync migrate`) and roles granted rights on it explicitly, i.e.
-- the role calendar-sync runs as: grant it select, insert, delete if it is not
-- the owner. A role that may write here (or is a superuser, or a member of the
-- calendar-sync role) can still hide a transaction from the calendar.
--
-- xid: pg_current_xact_id() of the writing transaction (pgoutput's Begin
--      carries its low 32 bits).
-- slot: the writing consumer's slot, for people; every consumer honours every
--      row, so two consumers on one database never echo each other.
-- lsn: the LSN returned by the transaction's marker message, the first WAL
--      record of the transaction. Rows are deleted once every logical slot of
--      the database has its restart_lsn past it (no slot can stream the
--      transaction again).
create table if not exists calendar_sync_echo (
    xid xid8 primary key,
    slot text not null,
    lsn pg_lsn not null default pg_current_wal_insert_lsn(),
    created_at timestamptz not null default now()
);
create index if not exists calendar_sync_echo_lsn on calendar_sync_echo (lsn);

-- Nobody but the owner: not PUBLIC, and not the roles that default privileges
-- (ALTER DEFAULT PRIVILEGES ... GRANT ... ON TABLES TO crm_app, common in CRMs)
-- granted this new table to.
revoke all on calendar_sync_echo from public;
do $$
declare
    grantee_name text;
begin
    for grantee_name in
        select distinct a.grantee::regrole::text
          from pg_class c, aclexplode(c.relacl) a
         where c.oid = 'calendar_sync_echo'::regclass
           and a.grantee <> 0 and a.grantee <> c.relowner
    loop
        execute format('revoke all on calendar_sync_echo from %s', grantee_name);
    end loop;
end
$$;
