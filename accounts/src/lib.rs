//! Trial accounts and the promises made about them (P4–P8): sign-up, log-in, the
//! person's view, correction and export of their data, consent, closure, and the purge
//! that deletes a closed account's records within seven working days.
//!
//! Must never: store an IP address, a plain password or a session id in the clear; log
//! an email, name, password, token or address; keep anything that names or links to a
//! person past the purge deadline, except identifier-free daily aggregates.
//!
//! So far this crate holds the deletion deadline (`deadline`), the in-memory abuse
//! limits (`ratelimit`) and password policy and hashing (`password`); storage,
//! sessions, data rights and the purge job are still to come (see the accounts issue).

pub mod deadline;
pub mod password;
pub mod ratelimit;
