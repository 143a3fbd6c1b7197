//! The apply path's keyed statements stay index probes whatever the tables'
//! statistics say (`apply::sql`'s module docs, decision 45).

use calendar_sync::apply::sql::keyed_statements;

use crate::support::*;

/// A scan that reads rows it was not asked for: a sequential scan, a hash
/// join (it reads the whole inner side), or an array applied as a filter
/// instead of an index or TID condition.
fn wasteful(plan: &str) -> Vec<String> {
    plan.lines()
        .map(str::trim)
        .filter(|l| {
            // The echo key table holds one row by its primary-key check.
            (l.contains("Seq Scan") && !l.contains("calendar_sync_echo_key"))
                || l.contains("Hash Join")
                || (l.starts_with("Filter:") && l.contains("ANY"))
        })
        .map(str::to_string)
        .collect()
}

/// Generic plans made on empty tables, as the prepared statements of a
/// first catch-up get them: every keyed statement finds its rows by index
/// probes (or the TIDs they return). The plain `key = any($1)` forms were
/// planned as a filter over every row (`select_events`), a sequential scan
/// (`delete_events`) and a hash join over a sequential scan
/// (`update_events`), and kept those plans as the table grew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_statements_probe_indexes_even_when_planned_on_empty_tables() {
    let db = TestDb::crm().await;
    db.migrate().await;
    db.client
        .batch_execute("delete from interaction; set plan_cache_mode = force_generic_plan")
        .await
        .expect("an empty interaction table, generic plans");
    let mut bad = Vec::new();
    for (name, sql) in keyed_statements() {
        db.client
            .batch_execute(&format!("prepare {name} as {sql}"))
            .await
            .unwrap_or_else(|e| panic!("preparing {name}: {e}"));
        let params: i32 = db
            .client
            .query_one(
                "select cardinality(parameter_types) from pg_prepared_statements where name = $1",
                &[&name],
            )
            .await
            .expect("parameter count")
            .get(0);
        let nulls = vec!["null"; params as usize].join(", ");
        let plan: String = db
            .client
            .simple_query(&format!("explain (costs off) execute {name}({nulls})"))
            .await
            .unwrap_or_else(|e| panic!("explaining {name}: {e}"))
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let waste = wasteful(&plan);
        if !waste.is_empty() {
            bad.push(format!("{name}: {waste:?}\n{plan}"));
        }
    }
    assert!(
        bad.is_empty(),
        "plans that read more than their keys:\n{}",
        bad.join("\n\n")
    );
}
