-- idx_calendar_events_related (design document) indexes exactly the columns
-- of the unique constraint calendar_events_related_table_related_id_key, whose
-- index serves every lookup by (related_table, related_id) just as well. The
-- duplicate only costs: one more index entry to write for every event created
-- or moved, on every insert of a catch-up or snapshot (decision 45).
drop index if exists idx_calendar_events_related;
