-- Deviation (contract §3, "looked up at apply time"): the names that
-- calendar_events.participants are built from, kept in the target in commit
-- (LSN) order from the replication stream (customer and contact are in the
-- publication) and seeded by the initial snapshot from the same exported
-- snapshot as the interactions. Participants are looked up here, as of the
-- source transaction being applied, instead of in the live source tables: a
-- consumer that replays after an outage then decides exactly as an
-- uninterrupted one did, log rows included.
create table if not exists calendar_sync_party_names (
    party text not null check (party in ('customer', 'contact')),
    id    uuid not null,
    -- Display name: customer.name; for a contact first + last name, trimmed,
    -- else email. NULL when there is none.
    name  text,
    primary key (party, id)
);
