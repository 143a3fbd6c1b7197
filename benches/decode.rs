//! Cost of decoding pgoutput messages, against the cost of copying them.
//!
//! Each group measures `parse` on one realistic frame next to
//! `Bytes::copy_from_slice` of the same frame. The copy is the floor any
//! decoder that owned its data would pay at least once, so the ratio of the
//! two says how much the decoding itself adds on top of touching the bytes.
//!
//! Run with `cargo bench --bench decode`.

use std::hint::black_box;

use bytes::Bytes;
use calendar_sync::pgoutput::{parse, TupleValue};
use calendar_sync::test_utils::pgoutput::{insert, relation, text};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A 16-column row shaped like a CRM interaction: ids, timestamps, short
/// and medium text, a NULL, a boolean and a JSON blob.
fn interaction_row() -> Vec<TupleValue> {
    vec![
        text("1844674407"),
        text("6b0c2f7e-2b9d-4f43-9a55-0d3f3c6b9e21"),
        text("42"),
        text("meeting"),
        text("Quarterly review with Acme Corp"),
        text("Walk through the Q3 numbers, renewal terms and the integration roadmap."),
        text("2024-05-14 09:30:00+00"),
        text("2024-05-14 10:30:00+00"),
        text("Europe/Berlin"),
        text("Conference room 3B, 2nd floor"),
        TupleValue::Null,
        text("t"),
        text("scheduled"),
        text(r#"{"attendees":["ana@acme.example","li@crm.example"],"reminder_min":15}"#),
        text("2024-05-01 12:00:00.123456+00"),
        text("2024-05-02 08:15:42.654321+00"),
    ]
}

/// The Relation message describing that table.
fn interaction_relation() -> Bytes {
    relation(
        16_401,
        "crm",
        "interaction",
        b'd',
        &[
            ("id", 20, true),
            ("uuid", 2950, false),
            ("owner_id", 20, false),
            ("kind", 25, false),
            ("title", 25, false),
            ("description", 25, false),
            ("starts_at", 1184, false),
            ("ends_at", 1184, false),
            ("time_zone", 25, false),
            ("location", 25, false),
            ("deleted_at", 1184, false),
            ("all_day", 16, false),
            ("status", 25, false),
            ("metadata", 3802, false),
            ("created_at", 1184, false),
            ("updated_at", 1184, false),
        ],
    )
}

fn bench_frame(c: &mut Criterion, group_name: &str, frame: &Bytes) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("parse", |b| b.iter(|| parse(black_box(frame))));
    group.bench_function("copy_from_slice (memcpy floor)", |b| {
        b.iter(|| Bytes::copy_from_slice(black_box(frame)))
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let insert = insert(16_401, &interaction_row());
    let relation = interaction_relation();
    assert!(parse(&insert).is_ok() && parse(&relation).is_ok());
    bench_frame(c, &format!("insert_16_columns_{}B", insert.len()), &insert);
    bench_frame(
        c,
        &format!("relation_16_columns_{}B", relation.len()),
        &relation,
    );
}

criterion_group!(benches, decode);
criterion_main!(benches);
