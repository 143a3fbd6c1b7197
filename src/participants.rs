//! PURE: who an event shows as its participants, owned here alone (contract
//! §3): the two parties ([`Party`]), which source columns make a party's
//! display name ([`Party::name_columns`]) and how ([`Party::display_name`]),
//! the participants rule in Rust ([`participants`]) and its SQL twin
//! ([`participants_sql`], for the set-based refresh after a rename).
//!
//! Every reader of names goes through here: the stream's decoder (a
//! customer/contact change, by the columns' positions in the relation), the
//! initial snapshot (its name cursors, [`Party::snapshot_select`]), and the
//! retry worker and `reconcile` (the current state with its names,
//! [`name_select`] and [`Party::display_name`] of the row's columns).
//! `tests/mapping.rs` checks that the SQL twin and the Rust rule agree,
//! NULL and blank names included.

use crate::config::ParticipantSchema;
use crate::db::quote_ident;

/// Which participant source table a name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    Customer,
    Contact,
}

impl Party {
    pub const ALL: [Party; 2] = [Party::Customer, Party::Contact];

    /// `calendar_sync_party_names.party`.
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Customer => "customer",
            Party::Contact => "contact",
        }
    }

    /// The inverse of [`Party::as_str`]; anything else is not a party (a
    /// row of `calendar_sync_party_names` written by something else), never
    /// silently a contact.
    pub fn parse(s: &str) -> Option<Party> {
        match s {
            "customer" => Some(Party::Customer),
            "contact" => Some(Party::Contact),
            _ => None,
        }
    }

    /// The party's source table (configured).
    pub fn table(self, p: &ParticipantSchema) -> &str {
        match self {
            Party::Customer => &p.customer_table,
            Party::Contact => &p.contact_table,
        }
    }

    /// Its key column (configured).
    pub fn id_column(self, p: &ParticipantSchema) -> &str {
        match self {
            Party::Customer => &p.customer_id,
            Party::Contact => &p.contact_id,
        }
    }

    /// How many columns its display name is made of.
    pub fn name_count(self) -> usize {
        match self {
            Party::Customer => 1,
            Party::Contact => 3,
        }
    }

    /// The columns its display name is made of ([`Party::name_count`]), in
    /// the order [`Party::display_name`] takes them.
    pub fn name_columns(self, p: &ParticipantSchema) -> Vec<&str> {
        match self {
            Party::Customer => vec![&p.customer_name],
            Party::Contact => vec![
                &p.contact_first_name,
                &p.contact_last_name,
                &p.contact_email,
            ],
        }
    }

    /// The display name from the values of [`Party::name_columns`], in that
    /// order (a missing value is NULL). A customer: its name as it is. A
    /// contact: first and last name joined by one space, NULL parts left
    /// out, trimmed; the email when that is empty; `None` when nothing.
    pub fn display_name(self, parts: &[Option<&str>]) -> Option<String> {
        let part = |i: usize| parts.get(i).copied().flatten();
        match self {
            Party::Customer => part(0).map(str::to_string),
            Party::Contact => {
                let joined = [part(0), part(1)]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                let trimmed = joined.trim();
                if trimmed.is_empty() {
                    part(2).map(str::to_string)
                } else {
                    Some(trimmed.to_string())
                }
            }
        }
    }

    /// The initial snapshot's read of every row of the party's table: its id,
    /// then the name columns as text.
    pub fn snapshot_select(self, p: &ParticipantSchema) -> String {
        let names: Vec<String> = self
            .name_columns(p)
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        format!(
            "select {}, {} from {}",
            quote_ident(self.id_column(p)),
            names.join(", "),
            quote_ident(self.table(p))
        )
    }

    /// The name of the `i`th name column in [`name_select`]'s output.
    pub fn name_alias(self, i: usize) -> String {
        format!("p_{}_{i}", self.as_str())
    }
}

/// The name columns of both parties as text, for a select that joins the
/// customer table as `customer` and the contact table as `contact` (aliases),
/// named by [`Party::name_alias`].
pub fn name_select(p: &ParticipantSchema, customer: &str, contact: &str) -> String {
    let mut cols = Vec::new();
    for (party, alias) in [(Party::Customer, customer), (Party::Contact, contact)] {
        for (i, c) in party.name_columns(p).iter().enumerate() {
            cols.push(format!(
                "{alias}.{}::text as {}",
                quote_ident(c),
                party.name_alias(i)
            ));
        }
    }
    cols.join(", ")
}

/// `[customer name, contact name]`, NULLs left out, empty when none. Blank
/// names are kept as they are (what the CRM shows).
pub fn participants(customer_name: Option<String>, contact_name: Option<String>) -> Vec<String> {
    [customer_name, contact_name]
        .into_iter()
        .flatten()
        .collect()
}

/// The SQL twin of [`participants`] over two `text` expressions.
pub fn participants_sql(customer_name: &str, contact_name: &str) -> String {
    format!("array_remove(array[{customer_name}, {contact_name}]::text[], null)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_names_join_trim_and_fall_back_to_email() {
        let c = |f, l, e| Party::Contact.display_name(&[f, l, e]);
        assert_eq!(
            c(Some("Ada"), Some("Lovelace"), None).as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(c(None, Some("Lovelace"), None).as_deref(), Some("Lovelace"));
        assert_eq!(c(Some(" Ada "), None, None).as_deref(), Some("Ada"));
        assert_eq!(c(Some(" "), None, Some("a@x")).as_deref(), Some("a@x"));
        assert_eq!(c(None, None, None), None);
        assert_eq!(c(None, None, Some("")).as_deref(), Some(""));
    }

    #[test]
    fn a_customer_name_is_taken_as_it_is() {
        let c = |n| Party::Customer.display_name(&[n]);
        assert_eq!(c(Some(" Acme ")).as_deref(), Some(" Acme "));
        assert_eq!(c(None), None);
        assert_eq!(Party::Customer.display_name(&[]), None);
    }

    #[test]
    fn participants_leave_nulls_out() {
        assert_eq!(
            participants(Some("Acme".into()), Some("Ada".into())),
            vec!["Acme", "Ada"]
        );
        assert_eq!(participants(None, Some("Ada".into())), vec!["Ada"]);
        assert!(participants(None, None).is_empty());
    }

    #[test]
    fn party_names_round_trip_and_nothing_else_parses() {
        for p in Party::ALL {
            assert_eq!(Party::parse(p.as_str()), Some(p));
        }
        assert_eq!(Party::parse("Contact"), None);
        assert_eq!(Party::parse(""), None);
    }

    #[test]
    fn the_name_select_and_the_snapshot_read_follow_name_columns() {
        let p = ParticipantSchema::default();
        let s = name_select(&p, "cu", "co");
        for party in Party::ALL {
            assert_eq!(party.name_columns(&p).len(), party.name_count());
            for (i, c) in party.name_columns(&p).iter().enumerate() {
                assert!(
                    s.contains(&format!(
                        "{}::text as {}",
                        quote_ident(c),
                        party.name_alias(i)
                    )),
                    "{s}"
                );
            }
            let snap = party.snapshot_select(&p);
            assert!(
                snap.starts_with(&format!("select {},", quote_ident(party.id_column(&p)))),
                "{snap}"
            );
        }
    }
}
