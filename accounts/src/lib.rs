//! Trial accounts: sign-up, login, sessions, the person's data rights (view, correct,
//! export, withdraw consent, close) and the purge of closed accounts (promises P4–P8).
//!
//! Nothing is implemented here yet: the crate holds its place in the workspace layout
//! until the accounts work lands. Must never: store an IP address, keep a closed
//! account's personal rows past its purge deadline, or set any cookie but the session.
