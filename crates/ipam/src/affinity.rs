//! Block affinities: the per-host key (`/calico/ipam/v2/host/<node>/ipv4/block/<cidr>`)
//! that says a node owns a block, and its claim state machine
//! (`pending` → `confirmed` → `pendingDeletion`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where an affinity is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityState {
    /// Written before the block is created; treated as absent for routing.
    Pending,
    /// The block exists and is affine to the host.
    Confirmed,
    /// Being released.
    PendingDeletion,
}

impl AffinityState {
    /// Calico's JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityState::Pending => "pending",
            AffinityState::Confirmed => "confirmed",
            AffinityState::PendingDeletion => "pendingDeletion",
        }
    }
}

impl Serialize for AffinityState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AffinityState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "pending" => Ok(AffinityState::Pending),
            // Empty means confirmed: data written before states existed.
            "confirmed" | "" => Ok(AffinityState::Confirmed),
            "pendingDeletion" => Ok(AffinityState::PendingDeletion),
            other => Err(serde::de::Error::custom(format!(
                "unknown affinity state {other:?}"
            ))),
        }
    }
}

fn confirmed() -> AffinityState {
    AffinityState::Confirmed
}

/// The value of an affinity key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinity {
    /// Claim state.
    #[serde(default = "confirmed")]
    pub state: AffinityState,
    /// Soft-delete marker (Kubernetes backends); readers treat `true` as absent.
    #[serde(default)]
    pub deleted: bool,
}

impl BlockAffinity {
    /// An affinity in `state`.
    pub fn new(state: AffinityState) -> BlockAffinity {
        BlockAffinity {
            state,
            deleted: false,
        }
    }

    /// Decodes a stored value; an empty value is a legacy confirmed affinity.
    pub fn from_bytes(bytes: &[u8]) -> Result<BlockAffinity, serde_json::Error> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(BlockAffinity::new(AffinityState::Confirmed));
        }
        serde_json::from_slice(bytes)
    }
}

/// An affinity with the host and block it links, as listed from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityInfo {
    /// The node.
    pub host: String,
    /// The block.
    pub cidr: ipnet::IpNet,
    /// The claim state.
    pub state: AffinityState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_legacy() {
        let a = BlockAffinity::new(AffinityState::PendingDeletion);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"state":"pendingDeletion","deleted":false}"#
        );
        assert_eq!(
            BlockAffinity::from_bytes(b"").unwrap().state,
            AffinityState::Confirmed
        );
        assert_eq!(
            BlockAffinity::from_bytes(br#"{"state":""}"#).unwrap().state,
            AffinityState::Confirmed
        );
        assert!(BlockAffinity::from_bytes(br#"{"state":"odd"}"#).is_err());
    }
}
