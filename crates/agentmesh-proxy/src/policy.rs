//! The intentions and service catalog the proxy enforces: the SDK's policy watch, so a
//! sidecar and a service that does mTLS in-process decide from the same code.

pub use agentmesh_sdk::{PolicyWatch, Registration};
