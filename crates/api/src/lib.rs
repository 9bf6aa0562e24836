//! Calico's `projectcalico.org/v3` resources for Tabby: typed specs for every kind
//! with every documented field, Calico's defaults, validation that names the field
//! and the rule broken, and loading from (and writing to) YAML and JSON manifests,
//! so a Calico user's manifests apply unchanged. Pure code: no I/O.
//!
//! ```
//! let text = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n";
//! let mut pools = tabby_api::load::parse_documents(text, "pools.yaml").unwrap();
//! pools[0].apply_defaults();
//! assert_eq!(pools[0].spec.as_ip_pool().unwrap().block_size, Some(26));
//! ```

pub mod asn;
pub mod bgp;
pub mod endpoint;
pub mod felix;
pub mod ippool;
pub mod kind;
pub mod load;
pub mod meta;
pub mod net;
pub mod node;
pub mod policy;
pub mod resource;
pub mod validate;

pub use asn::{ASNumber, AsnError, DEFAULT_AS_NUMBER};
pub use ippool::validate_pool_overlaps;
pub use kind::Kind;
pub use load::{LoadError, Problem, ProblemKind};
pub use meta::ObjectMeta;
pub use resource::{Resource, Spec, Status, validate_update};
pub use validate::{FieldError, ValidationError, parse_duration};

/// The API group and version of every resource.
pub const API_VERSION: &str = "projectcalico.org/v3";
