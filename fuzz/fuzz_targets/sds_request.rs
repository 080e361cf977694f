//! Envoy SDS requests as the node's SDS service receives them: protobuf `DiscoveryRequest`
//! and `DeltaDiscoveryRequest` (decoded as tonic decodes them), then the resource names
//! parsed as the node parses them.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run sds_request` (from `fuzz/`).
#![no_main]

use agentmesh_node::ResourceName;
use agentmesh_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Encoding a decoded message and decoding it again gives the same message (compared by
/// size: the maps inside are hash maps, so the byte order may differ between encodings).
fn round_trips<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(bytes.len(), message.encoded_len());
    let again = M::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}"));
    assert_eq!(again.encoded_len(), message.encoded_len());
}

/// A parsed name is one the node can print back: the keywords, or the same SPIFFE ID.
fn check_name(name: &str) {
    match name.parse::<ResourceName>() {
        Ok(ResourceName::Default) => assert_eq!(name, "default"),
        Ok(ResourceName::RootCa) => assert_eq!(name, "ROOTCA"),
        Ok(ResourceName::All) => assert_eq!(name, "ALL"),
        Ok(ResourceName::Svid(id)) => assert_eq!(id.to_string(), name),
        Err(_) => {}
    }
}

fuzz_target!(|input: &[u8]| {
    if let Ok(request) = DiscoveryRequest::decode(input) {
        round_trips(&request);
        request.resource_names.iter().for_each(|n| check_name(n));
    }
    if let Ok(request) = DeltaDiscoveryRequest::decode(input) {
        round_trips(&request);
        request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .for_each(|n| check_name(n));
    }
});
