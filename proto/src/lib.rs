//! The `memoire.v1` gRPC contract, generated from the `.proto` files beside this crate.
//!
//! `proto/memoire/v1/*.proto` is the contract; this crate only compiles it (with a vendored
//! `protoc`) and exposes the messages, the client and server stubs, and the encoded file
//! descriptor set that server reflection serves.

/// Messages, enums, clients and servers of package `memoire.v1`.
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("memoire.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file of the contract (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("memoire_descriptor");

/// Fully qualified gRPC service names, as health checks and reflection list them.
pub mod service_names {
    /// The memory service.
    pub const MEMORY: &str = "memoire.v1.MemoryService";
    /// The admin service.
    pub const ADMIN: &str = "memoire.v1.AdminService";
}
