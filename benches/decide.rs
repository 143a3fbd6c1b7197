//! Cost of the pure half of applying one change: decoding the interaction row
//! from a pgoutput tuple and deciding its sync action, against a reference in
//! the same run: cloning the decoded row (the allocation floor of any mapping
//! that owns its strings).
//!
//! Run with `cargo bench --bench decide`. The database round trips of `apply`
//! dominate end to end; this bench keeps the CPU side honest.

use std::hint::black_box;

use bytes::Bytes;
use calendar_sync::mapping::interaction::MAPPED_COLUMNS;
use calendar_sync::mapping::rules::{decide, Change};
use calendar_sync::mapping::InteractionColumns;
use calendar_sync::pgoutput::{parse, Message, TupleValue};
use calendar_sync::test_utils::pgoutput::{insert, relation, text};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};

fn oid(name: &str) -> u32 {
    match name {
        "interaction_id" | "customer_id" | "contact_id" | "created_by" | "updated_by" => 2950,
        "interaction_date" | "created_at" | "updated_at" => 1184,
        "duration_minutes" => 23,
        "archived" => 16,
        _ => 25,
    }
}

fn value(name: &str) -> TupleValue {
    match name {
        "interaction_id" => text("6b0c2f7e-2b9d-4f43-9a55-0d3f3c6b9e21"),
        "customer_id" | "contact_id" | "created_by" => text("00000000-0000-4000-8000-000000000001"),
        "interaction_type" => text("meeting"),
        "subject" => text("Quarterly review with Acme Corp"),
        "interaction_date" => text("2026-11-26 09:30:00+00"),
        "location" => text("Conference room 3B"),
        "description" => {
            text("Walk through the Q3 numbers, renewal terms and the integration roadmap.")
        }
        "duration_minutes" => text("60"),
        "created_at" | "updated_at" => text("2026-11-01 12:00:00.123456+00"),
        "archived" => text("f"),
        _ => TupleValue::Null,
    }
}

fn bench(c: &mut Criterion) {
    let columns: Vec<(&str, u32, bool)> = MAPPED_COLUMNS
        .iter()
        .map(|n| (*n, oid(n), *n == "interaction_id"))
        .collect();
    let Ok(Message::Relation(rel)) = parse(&relation(1, "public", "interaction", b'd', &columns))
    else {
        panic!("relation frame");
    };
    let cols = InteractionColumns::from_relation(&rel).expect("mappable");
    let frame: Bytes = insert(
        1,
        &MAPPED_COLUMNS.iter().map(|n| value(n)).collect::<Vec<_>>(),
    );
    let Ok(Message::Insert(ins)) = parse(&frame) else {
        panic!("insert frame");
    };
    let row = cols.row(&ins.new).expect("row decodes");
    let at = Utc
        .with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("valid");
    let window = chrono::Duration::days(30);
    let participants = vec!["Acme Corp".to_string(), "Ada Lovelace".to_string()];

    let mut g = c.benchmark_group("interaction change");
    g.bench_function("reference: clone the decoded row", |b| {
        b.iter(|| black_box(row.clone()))
    });
    g.bench_function("decode row from tuple", |b| {
        b.iter(|| black_box(cols.row(black_box(&ins.new))))
    });
    g.bench_function("decide (create)", |b| {
        b.iter(|| {
            let change = Change::Upsert {
                row: black_box(&row),
                participants: participants.clone(),
            };
            black_box(decide(&change, None, at, window, chrono_tz::Europe::Berlin))
        })
    });
    g.bench_function("parse + decode + decide", |b| {
        b.iter(|| {
            let Ok(Message::Insert(ins)) = parse(black_box(&frame)) else {
                return;
            };
            if let Ok(row) = cols.row(&ins.new) {
                let change = Change::Upsert {
                    row: &row,
                    participants: participants.clone(),
                };
                black_box(decide(&change, None, at, window, chrono_tz::Europe::Berlin)).ok();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
