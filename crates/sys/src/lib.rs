//! The few syscalls Tabby needs that have no safe wrapper in our
//! dependencies: TCP MD5 signatures (RFC 2385) and IP_MINTTL for BGP TTL
//! security (GTSM, RFC 5082). Every unsafe block states why it is sound.

pub mod tcp;
