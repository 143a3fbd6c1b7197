-- The CRM that calendar-sync starts from (calendar-sync-design.md, "Existing
-- Tables"): users, customer, contact, interaction, and the BEFORE UPDATE trigger
-- that bumps updated_at, as CRMs commonly have (with clock_timestamp(), the
-- harder case for the stamp: the bump lands after the stamp transaction's
-- now()). Used by the demo and the tests.
create table users (
    user_id uuid primary key default gen_random_uuid(),
    email   varchar(255) not null
);

create table customer (
    customer_id uuid primary key default gen_random_uuid(),
    name        varchar(255) not null
);

create table contact (
    contact_id  uuid primary key default gen_random_uuid(),
    customer_id uuid references customer (customer_id),
    first_name  varchar(100),
    last_name   varchar(100),
    email       varchar(255)
);

create table interaction (
    interaction_id   uuid primary key default gen_random_uuid(),
    interaction_type varchar(20) not null,
    subject          varchar(255) not null,
    interaction_date timestamptz not null,
    customer_id      uuid references customer (customer_id),
    contact_id       uuid references contact (contact_id),
    opportunity_id   uuid,
    location         varchar(255),
    description      text,
    duration_minutes integer,
    direction        varchar(20),
    medium           varchar(50),
    outcome          varchar(100),
    sentiment        varchar(20),
    importance       integer,
    private_notes    varchar,
    created_by       uuid not null references users (user_id),
    updated_by       uuid references users (user_id),
    created_at       timestamptz default now(),
    updated_at       timestamptz default now(),
    archived         boolean default false
);

create function crm_set_updated_at() returns trigger language plpgsql as $$
begin
    new.updated_at := clock_timestamp();
    return new;
end
$$;

create trigger interaction_set_updated_at before update on interaction
    for each row execute function crm_set_updated_at();
