-- calendar-sync source changes (the seed's "Interaction Table Enhancement").
-- Applied to DATABASE_URL. Written by the consumer after each successful sync
-- (CALENDAR_SYNC_WRITE_SYNCED_AT); its own transactions are marked with a
-- transactional logical message so their echo in the stream is ignored.
alter table interaction add column if not exists calendar_synced_at timestamptz;
create index if not exists idx_interaction_synced_at on interaction (calendar_synced_at);
