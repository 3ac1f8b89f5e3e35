//! The Raft type configuration: what a log entry carries and what applying it returns.

use crate::proto::peer::{Command, CommandResult};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

openraft::declare_raft_types!(
    /// Flotilla store's Raft types: commands are the etcd write requests themselves.
    pub TypeConfig:
        D = Wire<Command>,
        R = Wire<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A protobuf message carried through serde as its protobuf encoding, so log entries and
/// results keep etcd's wire format inside the Raft log too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wire<T>(pub T);

impl<T: Message> Serialize for Wire<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: Message + Default> Deserialize<'de> for Wire<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Message + Default> serde::de::Visitor<'de> for V<T> {
            type Value = Wire<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("protobuf bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                T::decode(v).map(Wire).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut buf = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    buf.push(b);
                }
                self.visit_bytes(&buf)
            }
        }
        d.deserialize_byte_buf(V(PhantomData))
    }
}

impl fmt::Display for Wire<Command> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.op.as_ref().map(std::mem::discriminant))
    }
}
