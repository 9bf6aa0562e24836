//! The few places Tabby needs `unsafe`: syscalls with no safe wrapper in our
//! dependencies (TCP MD5 signatures, RFC 2385; IP_MINTTL for BGP TTL security,
//! GTSM, RFC 5082), a long-lived libnftables context loaded at run time and
//! `malloc_trim`.
//! Every unsafe block states why it is sound.

pub mod memory;
pub mod nftables;
pub mod tcp;
